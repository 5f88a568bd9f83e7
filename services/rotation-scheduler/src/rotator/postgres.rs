//! `postgres_password`: a PostgreSQL role's password, set as a SCRAM-SHA-256 verifier (the
//! password itself never reaches the server's logs); with two roles, rotations alternate
//! between them so the credential in use is never the one being changed.

use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;
use zeroize::Zeroizing;

use super::{
    Charset, Ctx, Login, Params, Progress, Secret, StepError, StepFuture, TARGET_TIMEOUT, Target,
    admin_url, ident_ok, random_string,
};

/// The parameters `postgres_password` takes.
pub(super) const PARAMETERS: &[&str] = &["admin_secret", "roles"];

/// A PostgreSQL role's password (or two roles', alternating).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Postgres {
    /// Secret path whose value is an admin connection URL (a role with CREATEROLE).
    admin_secret: String,
    /// One role, or two to alternate.
    roles: Vec<String>,
}

impl Postgres {
    pub(super) fn parse(p: &Params<'_>) -> Result<Self, String> {
        let roles: Vec<String> = match p.get("roles") {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or("rotator postgres_password: roles must be strings")?,
            _ => {
                return Err("rotator postgres_password needs roles: [role] or [a, b]".into());
            }
        };
        if roles.is_empty() || roles.len() > 2 || roles.iter().any(|r| !ident_ok(r)) {
            return Err(
                "rotator postgres_password: roles must be one or two role names \
                        of 1-63 characters [A-Za-z0-9_-]"
                    .into(),
            );
        }
        if roles.len() == 2 && roles[0] == roles[1] {
            return Err("rotator postgres_password: the two roles must differ".into());
        }
        Ok(Self {
            admin_secret: p.required("admin_secret")?,
            roles,
        })
    }
}

impl Target for Postgres {
    fn admin_secret(&self) -> Option<&str> {
        Some(&self.admin_secret)
    }

    /// A new password, for the role not in `current` when there are two.
    fn generate<'a>(
        &'a self,
        _: &'a Ctx<'a>,
        current: Option<&'a Secret>,
    ) -> StepFuture<'a, Secret> {
        Box::pin(async move {
            let now = current
                .and_then(|c| Login::parse(c).ok())
                .map(|l| l.username);
            let username = match (self.roles.as_slice(), now) {
                ([a, b], Some(u)) if u == *a => b.clone(),
                _ => self.roles[0].clone(),
            };
            Ok(Login {
                username,
                password: random_string(32, Charset::Alphanumeric),
            }
            .to_secret())
        })
    }

    fn set<'a>(&'a self, ctx: &'a Ctx<'a>, new: &'a Secret) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let l = Login::parse(new)?;
            pg_set_password(ctx.admin, &l.username, Some(l.password.as_bytes())).await
        })
    }

    fn test<'a>(&'a self, ctx: &'a Ctx<'a>, new: &'a Secret) -> StepFuture<'a, Progress> {
        Box::pin(async move {
            let l = Login::parse(new)?;
            pg_test_login(ctx.admin, &l).await?;
            Ok(Progress::Done)
        })
    }

    fn restore<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        new: &'a Secret,
        before: &'a [Secret],
    ) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let n = Login::parse(new)?;
            let old = before
                .iter()
                .filter_map(|b| Login::parse(b).ok())
                .find(|b| b.username == n.username);
            let password = old.as_ref().map(|o| o.password.as_bytes());
            pg_set_password(ctx.admin, &n.username, password).await
        })
    }

    fn revoke<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        previous: &'a Secret,
        current: &'a Secret,
    ) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let (p, c) = (Login::parse(previous)?, Login::parse(current)?);
            if p.username == c.username {
                // One role: its old password was replaced at `set`.
                return Ok(());
            }
            pg_set_password(ctx.admin, &p.username, None).await
        })
    }
}

impl StepError {
    /// A Postgres failure of `what`: the server's own refusals (an error with an SQLSTATE)
    /// are rejections; failing to reach or keep a connection is transient.
    fn postgres(what: &str, e: &sqlx::Error) -> Self {
        let why = format!("{what}: {}", pg_error(e));
        match e {
            sqlx::Error::Database(_) | sqlx::Error::Configuration(_) => Self::Rejected(why),
            _ => Self::Transient(why),
        }
    }
}

pub(super) async fn pg_admin(admin: Option<&Secret>) -> Result<sqlx::PgConnection, StepError> {
    let url = admin_url(admin)?;
    let opts: PgConnectOptions = url
        .parse()
        .map_err(|_| "the admin secret is not a postgres:// URL".to_string())?;
    // Statements carry password verifiers: never logged.
    let opts = opts.disable_statement_logging();
    tokio::time::timeout(TARGET_TIMEOUT, opts.connect())
        .await
        .map_err(|_| StepError::Transient("connecting to Postgres as admin timed out".into()))?
        .map_err(|e| StepError::postgres("connecting to Postgres as admin", &e))
}

/// A database error without anything the server echoed back from the statement.
fn pg_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => format!(
            "{} ({})",
            d.message(),
            d.code().as_deref().unwrap_or("no code")
        ),
        other => other.to_string(),
    }
}

/// Sets a role's password by sending its SCRAM verifier (so the plaintext never reaches the
/// server's statement log); `None` sets a random one nobody knows: the role is locked out.
async fn pg_set_password(
    admin: Option<&Secret>,
    role: &str,
    password: Option<&[u8]>,
) -> Result<(), StepError> {
    let throwaway;
    let password = match password {
        Some(p) => p,
        None => {
            throwaway = random_string(32, Charset::Alphanumeric);
            throwaway.as_bytes()
        }
    };
    let verifier = Zeroizing::new(sentia_crypto::scram_sha256_verifier(password));
    let mut conn = pg_admin(admin).await?;
    // Role names are checked to [A-Za-z0-9_-]; verifiers are base64 and `$:`; both quoted.
    let sql = Zeroizing::new(format!(
        "ALTER ROLE \"{role}\" WITH LOGIN PASSWORD '{}'",
        verifier.as_str()
    ));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut conn)
        .await
        .map_err(|e| StepError::postgres(&format!("ALTER ROLE {role}"), &e))?;
    Ok(())
}

/// Logs in as the role with the new password; where the admin may read `pg_authid` the stored
/// verifier is checked too — which proves the password even on servers that trust every
/// local login.
async fn pg_test_login(admin: Option<&Secret>, l: &Login) -> Result<(), StepError> {
    let url = admin_url(admin)?;
    let opts: PgConnectOptions = url
        .parse()
        .map_err(|_| "the admin secret is not a postgres:// URL".to_string())?;
    let mut conn = tokio::time::timeout(
        TARGET_TIMEOUT,
        opts.clone()
            .username(&l.username)
            .password(&l.password)
            .connect(),
    )
    .await
    .map_err(|_| StepError::Transient(format!("logging in as {} timed out", l.username)))?
    .map_err(|e| StepError::postgres(&format!("logging in as {} failed", l.username), &e))?;
    let who: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| StepError::postgres(&format!("query as {}", l.username), &e))?;
    if who != l.username {
        return Err(format!("logged in as {who}, expected {}", l.username).into());
    }
    let mut admin_conn = pg_admin(admin).await?;
    let stored: Result<Option<String>, _> =
        sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
            .bind(&l.username)
            .fetch_one(&mut admin_conn)
            .await;
    match stored {
        Ok(Some(v)) if sentia_crypto::scram_sha256_matches(&v, l.password.as_bytes()) => Ok(()),
        Ok(_) => Err(format!(
            "role {} does not have the new password (its stored verifier differs)",
            l.username
        )
        .into()),
        // Not a superuser: the login above is the proof.
        Err(_) => Ok(()),
    }
}
