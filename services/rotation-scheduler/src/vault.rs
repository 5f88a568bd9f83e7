//! The calls the scheduler makes to vault-service, as its own service identity, through the
//! SDK every other caller uses. Its own retries are the engine's (a failed step is retried
//! with backoff and rolled back where it must be), so these calls are made once.

use sentia_client::Client;
use sentia_proto::vault::v1 as pb;
use sentia_proto::vault::v1::secret_service_client::SecretServiceClient;
use sentia_runtime::client::AuthedChannel;

use crate::RotationError;
use crate::rotator::Secret;

/// vault-service, as the scheduler uses it.
#[derive(Clone)]
pub struct Vault(SecretServiceClient<AuthedChannel>);

impl Vault {
    /// Wraps the SDK's client.
    pub fn new(client: Client) -> Self {
        Self(client.secrets())
    }

    /// Metadata and versions; None if the secret does not exist.
    pub async fn describe(
        &self,
        path: &str,
    ) -> Result<Option<pb::DescribeSecretResponse>, RotationError> {
        match self
            .0
            .clone()
            .describe_secret(pb::DescribeSecretRequest { path: path.into() })
            .await
        {
            Ok(r) => Ok(Some(r.into_inner())),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(RotationError::vault(s)),
        }
    }

    /// The value at a label or version; None if there is none.
    pub async fn value(
        &self,
        path: &str,
        selector: pb::get_secret_request::Selector,
    ) -> Result<Option<(u64, Secret)>, RotationError> {
        match self
            .0
            .clone()
            .get_secret(pb::GetSecretRequest {
                path: path.into(),
                selector: Some(selector),
                allow_expired: false,
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                Ok(Some((r.version, Secret::new(r.value))))
            }
            // Missing, or a version deleted or destroyed: nothing to read.
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::NotFound | tonic::Code::FailedPrecondition
                ) =>
            {
                Ok(None)
            }
            Err(s) => Err(RotationError::vault(s)),
        }
    }

    /// The value at a label.
    pub async fn labelled(
        &self,
        path: &str,
        label: &str,
    ) -> Result<Option<(u64, Secret)>, RotationError> {
        self.value(path, pb::get_secret_request::Selector::Label(label.into()))
            .await
    }

    /// The value of a version.
    pub async fn version(&self, path: &str, v: u64) -> Result<Option<Secret>, RotationError> {
        Ok(self
            .value(path, pb::get_secret_request::Selector::Version(v))
            .await?
            .map(|(_, s)| s))
    }

    /// Writes a new version labelled PENDING; `request_id` makes a retry return the same
    /// version instead of writing another.
    pub async fn put_pending(
        &self,
        path: &str,
        value: &Secret,
        request_id: &str,
    ) -> Result<u64, RotationError> {
        let r = self
            .0
            .clone()
            .put_secret(pb::PutSecretRequest {
                path: path.into(),
                value: value.expose().to_vec(),
                expected_version: None,
                request_id: request_id.into(),
                metadata: None,
                update_mask: None,
                labels: vec!["PENDING".into()],
            })
            .await
            .map_err(RotationError::vault)?;
        Ok(r.into_inner().version)
    }

    /// Points `label` at `version` (moving CURRENT also moves PREVIOUS to the old CURRENT).
    pub async fn move_label(&self, path: &str, label: &str, v: u64) -> Result<(), RotationError> {
        self.0
            .clone()
            .move_label(pb::MoveLabelRequest {
                path: path.into(),
                label: label.into(),
                version: v,
            })
            .await
            .map_err(RotationError::vault)?;
        Ok(())
    }

    /// Crypto-shreds a version (idempotent: an already destroyed version is fine).
    pub async fn destroy(&self, path: &str, v: u64) -> Result<(), RotationError> {
        match self
            .0
            .clone()
            .destroy_secret_versions(pb::DestroySecretVersionsRequest {
                path: path.into(),
                versions: vec![v],
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(RotationError::vault(s)),
        }
    }

    /// Every secret under `prefix`, all pages.
    pub async fn list(&self, prefix: &str) -> Result<Vec<pb::SecretMetadata>, RotationError> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let r = self
                .0
                .clone()
                .list_secrets(pb::ListSecretsRequest {
                    prefix: prefix.into(),
                    page_size: 1000,
                    page_token: token,
                })
                .await
                .map_err(RotationError::vault)?
                .into_inner();
            out.extend(r.secrets);
            if r.next_page_token.is_empty() {
                return Ok(out);
            }
            token = r.next_page_token;
        }
    }
}
