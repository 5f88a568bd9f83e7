//! `random` and `api_key`: a random string with an optional literal prefix; there is nothing
//! to apply it to, so the only check is its shape.

use super::{Charset, Ctx, Params, Progress, Secret, StepFuture, Target, random_string};

/// The parameters `random` and `api_key` take.
pub(super) const PARAMETERS: &[&str] = &["length", "charset", "prefix"];

/// A random string (`random`) or prefixed API key (`api_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Random {
    /// Characters after the prefix.
    length: usize,
    /// Alphabet.
    charset: Charset,
    /// Literal prefix, e.g. "sk_live_".
    prefix: String,
}

impl Random {
    pub(super) fn parse(p: &Params<'_>) -> Result<Self, String> {
        let name = p.name;
        let length = match p.get("length") {
            None => 40,
            Some(v) => v
                .as_u64()
                .filter(|n| (16..=4096).contains(n))
                .ok_or_else(|| format!("rotator {name}: length must be 16-4096"))?
                as usize,
        };
        let charset = match p.string("charset")? {
            None => Charset::Alphanumeric,
            Some(c) => Charset::parse(&c).ok_or_else(|| {
                format!(
                    "rotator {name}: charset {c:?} is not one of alphanumeric, hex, \
                     base64url, printable"
                )
            })?,
        };
        let prefix = p.string("prefix")?.unwrap_or_default();
        if prefix.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "rotator {name}: prefix must be at most 64 printable characters"
            ));
        }
        Ok(Self {
            length,
            charset,
            prefix,
        })
    }

    /// A new value: the prefix, then `length` random characters.
    pub(super) fn value(&self) -> Secret {
        let body = random_string(self.length, self.charset);
        let mut v = Vec::with_capacity(self.prefix.len() + body.len());
        v.extend_from_slice(self.prefix.as_bytes());
        v.extend_from_slice(body.as_bytes());
        Secret::new(v)
    }
}

impl Target for Random {
    fn generate<'a>(&'a self, _: &'a Ctx<'a>, _: Option<&'a Secret>) -> StepFuture<'a, Secret> {
        Box::pin(async move { Ok(self.value()) })
    }

    fn test<'a>(&'a self, _: &'a Ctx<'a>, new: &'a Secret) -> StepFuture<'a, Progress> {
        Box::pin(async move {
            let want = self.prefix.len() + self.length;
            if new.expose().len() == want {
                Ok(Progress::Done)
            } else {
                Err(format!(
                    "the pending value is {} bytes, expected {want}",
                    new.expose().len()
                )
                .into())
            }
        })
    }
}
