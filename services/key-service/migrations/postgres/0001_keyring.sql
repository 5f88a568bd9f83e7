-- The keyring: one row of master metadata, named keys, and their versions' material wrapped
-- under the master-derived keyring key (AES-256-GCM, AAD binds key name and version).
CREATE TABLE keyring_meta (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    master_version   BIGINT  NOT NULL,
    check_blob       BYTEA   NOT NULL,
    seal_type        TEXT    NOT NULL,
    shamir_shares    BIGINT  NOT NULL,
    shamir_threshold BIGINT  NOT NULL,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL
);

CREATE TABLE keys (
    name                   TEXT   PRIMARY KEY,
    purpose                TEXT   NOT NULL,
    primary_version        BIGINT NOT NULL,
    min_decryption_version BIGINT NOT NULL,
    auto_rotate_secs       BIGINT,
    created_at             BIGINT NOT NULL,
    updated_at             BIGINT NOT NULL
);

CREATE TABLE key_versions (
    key_name         TEXT   NOT NULL REFERENCES keys (name),
    version          BIGINT NOT NULL,
    wrapped_material BYTEA  NOT NULL,
    encryption_count BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    PRIMARY KEY (key_name, version)
);
