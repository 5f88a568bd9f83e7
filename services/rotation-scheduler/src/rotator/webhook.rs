//! `webhook`: anything else. An endpoint the user runs is told each step (a signed POST with
//! no values — it reads PENDING / CURRENT from vault-service with its own credentials) and
//! answers 2xx when done. New values are random, as `random` makes them.

use zeroize::Zeroizing;

use super::random::Random;
use super::{Ctx, Params, Progress, Secret, StepError, StepFuture, Target};

/// The parameters `webhook` takes (its value parameters are `random`'s).
pub(super) const PARAMETERS: &[&str] = &["url", "signing_secret", "length", "charset", "prefix"];

/// An endpoint told each step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Webhook {
    /// http:// or https:// URL.
    url: String,
    /// Secret path whose value (at least 16 bytes) signs the requests.
    signing_secret: String,
    /// How new values are made.
    value: Random,
}

impl Webhook {
    pub(super) fn parse(p: &Params<'_>) -> Result<Self, String> {
        let url = p.required("url")?;
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || url.parse::<http::Uri>().is_err()
        {
            return Err(format!(
                "rotator webhook: url {url:?} is not an http(s) URL"
            ));
        }
        let mut value = p.map.clone();
        value.retain(|k, _| super::random::PARAMETERS.contains(&k.as_str()));
        Ok(Self {
            url,
            signing_secret: p.required("signing_secret")?,
            value: Random::parse(&Params {
                name: "random",
                map: &value,
            })?,
        })
    }

    /// Tells the endpoint about `step`; 2xx is success.
    async fn notify(&self, ctx: &Ctx<'_>, step: &str) -> Result<(), StepError> {
        let key = ctx.admin.ok_or("the webhook's signing secret is missing")?;
        let endpoint = sentia_runtime::webhook::SignedPost::new(
            &self.url,
            Zeroizing::new(key.expose().to_vec()),
        )
        .map_err(|e| format!("webhook: {e}"))?;
        let body = serde_json::json!({
            "step": step,
            "secret_path": ctx.path,
            "rotation_id": ctx.rotation_id,
            "pending_version": ctx.pending_version,
            "previous_version": ctx.previous_version,
        })
        .to_string();
        // No answer (refused, reset, timed out) is transient; an answer other than 2xx is the
        // endpoint refusing.
        let answer = endpoint
            .post(&body)
            .await
            .map_err(|e| StepError::Transient(format!("webhook {step}: {e}")))?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(format!(
                "webhook {step} answered {}: {}",
                answer.status,
                answer.body.chars().take(200).collect::<String>()
            )
            .into())
        }
    }
}

impl Target for Webhook {
    /// The signing secret is what the scheduler reads as this rotator's admin secret.
    fn admin_secret(&self) -> Option<&str> {
        Some(&self.signing_secret)
    }

    fn generate<'a>(&'a self, _: &'a Ctx<'a>, _: Option<&'a Secret>) -> StepFuture<'a, Secret> {
        Box::pin(async move { Ok(self.value.value()) })
    }

    fn set<'a>(&'a self, ctx: &'a Ctx<'a>, _: &'a Secret) -> StepFuture<'a, ()> {
        Box::pin(self.notify(ctx, "set"))
    }

    fn test<'a>(&'a self, ctx: &'a Ctx<'a>, _: &'a Secret) -> StepFuture<'a, Progress> {
        Box::pin(async move {
            self.notify(ctx, "test").await?;
            Ok(Progress::Done)
        })
    }

    fn restore<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        _: &'a Secret,
        _: &'a [Secret],
    ) -> StepFuture<'a, ()> {
        Box::pin(self.notify(ctx, "restore"))
    }

    fn revoke<'a>(&'a self, ctx: &'a Ctx<'a>, _: &'a Secret, _: &'a Secret) -> StepFuture<'a, ()> {
        Box::pin(self.notify(ctx, "revoke"))
    }
}
