//! App credentials (login by role id and secret id), revoked tokens and root tokens.

use sqlx::Row;
use sqlx::any::AnyRow;

use sentia_proto::wkt::now_ms;

use super::{Store, is_unique_violation};
use crate::VaultError;

/// An app credential row.
#[derive(Debug, Clone)]
pub struct CredentialRow {
    /// Public id.
    pub role_id: String,
    /// Display name.
    pub name: String,
    /// argon2 PHC string of the secret id.
    pub secret_hash: String,
    /// Policies.
    pub policies: Vec<String>,
    /// Token lifetime (s).
    pub token_ttl: i64,
    /// Who created it.
    pub created_by: String,
    /// Created (ms).
    pub create_time: i64,
    /// Stops logging in at (ms; 0 = never).
    pub expire_time: i64,
    /// Logins allowed (0 = unlimited).
    pub max_uses: i64,
    /// Logins so far.
    pub uses: i64,
    /// Revoked at (ms; 0 = not revoked).
    pub revoke_time: i64,
    /// Secret id last replaced at (ms; 0 = never).
    pub secret_rotate_time: i64,
    /// Last login (ms; 0 = never).
    pub last_login_time: i64,
}

const CREDENTIAL_COLUMNS: &str = "role_id, name, secret_hash, policies, token_ttl, created_by, \
     create_time, expire_time, max_uses, uses, revoke_time, secret_rotate_time, last_login_time";

fn credential_from(r: &AnyRow) -> Result<CredentialRow, VaultError> {
    let policies: String = r.try_get("policies")?;
    Ok(CredentialRow {
        role_id: r.try_get("role_id")?,
        name: r.try_get("name")?,
        secret_hash: r.try_get("secret_hash")?,
        policies: serde_json::from_str(&policies)
            .map_err(|_| VaultError::DataLoss("a credential row".into()))?,
        token_ttl: r.try_get("token_ttl")?,
        created_by: r.try_get("created_by")?,
        create_time: r.try_get("create_time")?,
        expire_time: r.try_get("expire_time")?,
        max_uses: r.try_get("max_uses")?,
        uses: r.try_get("uses")?,
        revoke_time: r.try_get("revoke_time")?,
        secret_rotate_time: r.try_get("secret_rotate_time")?,
        last_login_time: r.try_get("last_login_time")?,
    })
}

impl Store {
    /// Stores a new app credential (its `uses`, times and revocation start at zero).
    pub async fn create_credential(&self, c: &CredentialRow) -> Result<(), VaultError> {
        sqlx::query(
            "INSERT INTO app_credentials (role_id, name, secret_hash, policies, token_ttl, created_by, \
             create_time, expire_time, max_uses) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&c.role_id)
        .bind(&c.name)
        .bind(&c.secret_hash)
        .bind(serde_json::to_string(&c.policies).unwrap_or_else(|_| "[]".into()))
        .bind(c.token_ttl)
        .bind(&c.created_by)
        .bind(c.create_time)
        .bind(c.expire_time)
        .bind(c.max_uses)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An app credential by role id.
    pub async fn credential(&self, role_id: &str) -> Result<Option<CredentialRow>, VaultError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM app_credentials WHERE role_id = $1"
        ));
        let row = sqlx::query(sql)
            .bind(role_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(credential_from).transpose()
    }

    /// Credentials after role id `after`, by role id.
    pub async fn credentials(
        &self,
        after: &str,
        limit: i64,
        include_revoked: bool,
    ) -> Result<Vec<CredentialRow>, VaultError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM app_credentials WHERE role_id > $1 \
             AND (revoke_time = 0 OR $2 = 1) ORDER BY role_id LIMIT $3"
        ));
        let rows = sqlx::query(sql)
            .bind(after)
            .bind(i64::from(include_revoked))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(credential_from).collect()
    }

    /// Counts a login of `role_id` with the secret hash it was checked against, and records
    /// the token id it is about to issue (expiring at `token_exp` ms) — in one transaction,
    /// and only while the credential is live: not revoked, not expired, under its use limit,
    /// its secret not replaced meanwhile. False when it is not live. Revocation takes the
    /// same row lock, so a token recorded here is either refused or revoked with the
    /// credential.
    pub async fn begin_login(
        &self,
        role_id: &str,
        secret_hash: &str,
        token_id: &str,
        token_exp: i64,
    ) -> Result<bool, VaultError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let counted = sqlx::query(
            "UPDATE app_credentials SET uses = uses + 1, last_login_time = $1 \
             WHERE role_id = $2 AND secret_hash = $3 AND revoke_time = 0 \
             AND (max_uses = 0 OR uses < max_uses) AND (expire_time = 0 OR expire_time > $1)",
        )
        .bind(now)
        .bind(role_id)
        .bind(secret_hash)
        .execute(&mut *tx)
        .await?;
        if counted.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM credential_tokens WHERE role_id = $1 AND expire_time < $2")
            .bind(role_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO credential_tokens (token_id, role_id, expire_time) VALUES ($1, $2, $3)",
        )
        .bind(token_id)
        .bind(role_id)
        .bind(token_exp)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Revokes a credential and every unexpired token it issued. None if there is no such
    /// credential; revoking twice changes nothing.
    pub async fn revoke_credential(
        &self,
        role_id: &str,
    ) -> Result<Option<CredentialRow>, VaultError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE app_credentials SET revoke_time = $1 WHERE role_id = $2 AND revoke_time = 0",
        )
        .bind(now)
        .bind(role_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO revoked_tokens (token_id, expire_time, revoke_time) \
             SELECT token_id, expire_time, $1 FROM credential_tokens \
             WHERE role_id = $2 AND expire_time > $1 ON CONFLICT (token_id) DO NOTHING",
        )
        .bind(now)
        .bind(role_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.credential(role_id).await
    }

    /// Replaces a live credential's secret hash. False when there is no live credential
    /// `role_id` (the caller tells missing from revoked).
    pub async fn rotate_credential_secret(
        &self,
        role_id: &str,
        secret_hash: &str,
    ) -> Result<bool, VaultError> {
        let r = sqlx::query(
            "UPDATE app_credentials SET secret_hash = $1, secret_rotate_time = $2 \
             WHERE role_id = $3 AND revoke_time = 0",
        )
        .bind(secret_hash)
        .bind(now_ms())
        .bind(role_id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Records a revoked token id until its expiry.
    pub async fn revoke(&self, token_id: &str, expire_time: i64) -> Result<(), VaultError> {
        let r = sqlx::query(
            "INSERT INTO revoked_tokens (token_id, expire_time, revoke_time) VALUES ($1, $2, $3)",
        )
        .bind(token_id)
        .bind(expire_time)
        .bind(now_ms())
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Revoked token ids that have not expired yet; expired ones are purged.
    pub async fn revoked(&self) -> Result<Vec<String>, VaultError> {
        let now = now_ms();
        sqlx::query("DELETE FROM revoked_tokens WHERE expire_time < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        let rows = sqlx::query("SELECT token_id FROM revoked_tokens")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("token_id")?)).collect()
    }

    /// Stores a root token hash, unless one exists already. True if stored.
    pub async fn create_root_token(
        &self,
        token_id: &str,
        hash_hex: &str,
    ) -> Result<bool, VaultError> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query("SELECT COUNT(*) AS n FROM root_tokens")
            .fetch_one(&mut *tx)
            .await?;
        if n.try_get::<i64, _>("n")? > 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO root_tokens (token_id, token_hash, create_time) VALUES ($1, $2, $3)",
        )
        .bind(token_id)
        .bind(hash_hex)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Root token (id, SHA-256 hex) pairs.
    pub async fn root_tokens(&self) -> Result<Vec<(String, String)>, VaultError> {
        let rows = sqlx::query("SELECT token_id, token_hash FROM root_tokens")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("token_id")?, r.try_get("token_hash")?)))
            .collect()
    }

    /// Deletes a root token. True if it existed.
    pub async fn delete_root_token(&self, token_id: &str) -> Result<bool, VaultError> {
        let r = sqlx::query("DELETE FROM root_tokens WHERE token_id = $1")
            .bind(token_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }
}
