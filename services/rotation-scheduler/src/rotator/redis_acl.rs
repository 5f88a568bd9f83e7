//! `redis_acl`: a Redis ACL user's password. The new one is added beside the old (as a
//! SHA-256 hash, never in clear), and the old one is removed when the grace period ends.

use super::{
    Charset, Ctx, Login, Params, Progress, Secret, StepError, StepFuture, TARGET_TIMEOUT, Target,
    admin_url, ident_ok, random_string, sha256_hex,
};

/// The parameters `redis_acl` takes.
pub(super) const PARAMETERS: &[&str] = &["admin_secret", "username"];

/// A Redis ACL user's password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RedisAcl {
    /// Secret path whose value is a Redis URL of a user allowed to run ACL SETUSER.
    admin_secret: String,
    /// The ACL user.
    username: String,
}

impl RedisAcl {
    pub(super) fn parse(p: &Params<'_>) -> Result<Self, String> {
        let username = p.required("username")?;
        if !ident_ok(&username) {
            return Err("rotator redis_acl: username must be 1-63 characters [A-Za-z0-9_-]".into());
        }
        Ok(Self {
            admin_secret: p.required("admin_secret")?,
            username,
        })
    }
}

impl Target for RedisAcl {
    fn admin_secret(&self) -> Option<&str> {
        Some(&self.admin_secret)
    }

    fn generate<'a>(&'a self, _: &'a Ctx<'a>, _: Option<&'a Secret>) -> StepFuture<'a, Secret> {
        Box::pin(async move {
            Ok(Login {
                username: self.username.clone(),
                password: random_string(32, Charset::Alphanumeric),
            }
            .to_secret())
        })
    }

    fn set<'a>(&'a self, ctx: &'a Ctx<'a>, new: &'a Secret) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let l = Login::parse(new)?;
            redis_acl(
                ctx.admin,
                &l.username,
                &format!("#{}", sha256_hex(&l.password)),
            )
            .await
        })
    }

    fn test<'a>(&'a self, ctx: &'a Ctx<'a>, new: &'a Secret) -> StepFuture<'a, Progress> {
        Box::pin(async move {
            let l = Login::parse(new)?;
            redis_test_login(ctx.admin, &l).await?;
            Ok(Progress::Done)
        })
    }

    fn restore<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        new: &'a Secret,
        _: &'a [Secret],
    ) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let n = Login::parse(new)?;
            redis_acl(
                ctx.admin,
                &n.username,
                &format!("!{}", sha256_hex(&n.password)),
            )
            .await
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
            if p.password == c.password {
                return Ok(());
            }
            redis_acl(
                ctx.admin,
                &p.username,
                &format!("!{}", sha256_hex(&p.password)),
            )
            .await
        })
    }
}

impl StepError {
    /// A Redis failure of `what`: a connection that could not be made, dropped or timed out
    /// is transient; the server's refusals (NOPERM, WRONGPASS, ...) are rejections.
    fn redis(what: &str, e: &redis::RedisError) -> Self {
        let why = format!("{what}: {}", e.kind_str());
        if e.is_io_error()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.is_connection_dropped()
        {
            Self::Transient(why)
        } else {
            Self::Rejected(why)
        }
    }
}

async fn redis_conn(url: &str) -> Result<redis::aio::MultiplexedConnection, StepError> {
    let client = redis::Client::open(url).map_err(|_| "not a redis:// URL".to_string())?;
    tokio::time::timeout(TARGET_TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| StepError::Transient("connecting to Redis timed out".into()))?
        .map_err(|e| StepError::redis("connecting to Redis", &e))
}

trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for redis::RedisError {
    /// The error's category and code, never the command (which may hold a password hash).
    fn kind_str(&self) -> String {
        format!("{:?} {}", self.kind(), self.code().unwrap_or(""))
    }
}

pub(super) async fn redis_acl(
    admin: Option<&Secret>,
    user: &str,
    rule: &str,
) -> Result<(), StepError> {
    let url = admin_url(admin)?;
    let mut conn = redis_conn(&url).await?;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(user)
        .arg("on")
        .arg(rule)
        .query_async(&mut conn)
        .await
        .map_err(|e| StepError::redis(&format!("ACL SETUSER {user}"), &e))?;
    Ok(())
}

async fn redis_test_login(admin: Option<&Secret>, l: &Login) -> Result<(), StepError> {
    let url = admin_url(admin)?;
    let mut info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
        .map_err(|_| "the admin secret is not a redis:// URL".to_string())?;
    let settings = info
        .redis_settings()
        .clone()
        .set_username(&l.username)
        .set_password(l.password.as_str());
    info = info.set_redis_settings(settings);
    let client = redis::Client::open(info).map_err(|e| e.kind_str())?;
    // The connection's handshake runs AUTH with these credentials: it only opens if Redis
    // accepts them. Nothing else is asked, since the user may hold no command rights.
    tokio::time::timeout(TARGET_TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| {
            StepError::Transient(format!("logging in to Redis as {} timed out", l.username))
        })?
        .map_err(|e| {
            StepError::redis(&format!("logging in to Redis as {} failed", l.username), &e)
        })?;
    Ok(())
}
