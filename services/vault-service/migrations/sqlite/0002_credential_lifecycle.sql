-- App credential lifecycle: expiry, a use limit, revocation, secret rotation, last login.
-- Times are ms since the epoch; 0 = not set.
ALTER TABLE app_credentials ADD COLUMN expire_time BIGINT NOT NULL DEFAULT 0;
ALTER TABLE app_credentials ADD COLUMN max_uses BIGINT NOT NULL DEFAULT 0;
ALTER TABLE app_credentials ADD COLUMN uses BIGINT NOT NULL DEFAULT 0;
ALTER TABLE app_credentials ADD COLUMN revoke_time BIGINT NOT NULL DEFAULT 0;
ALTER TABLE app_credentials ADD COLUMN secret_rotate_time BIGINT NOT NULL DEFAULT 0;
ALTER TABLE app_credentials ADD COLUMN last_login_time BIGINT NOT NULL DEFAULT 0;

-- The tokens each credential issued, until they expire: revoking the credential revokes them.
CREATE TABLE credential_tokens (
    token_id    TEXT PRIMARY KEY,
    role_id     TEXT NOT NULL,
    expire_time BIGINT NOT NULL
);
CREATE INDEX credential_tokens_role ON credential_tokens (role_id, expire_time);
