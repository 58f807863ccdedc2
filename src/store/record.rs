//! The console-connection record, as the store keeps it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use time::OffsetDateTime;

/// Free-form tags: string keys and values.
pub type FreeformTags = BTreeMap<String, String>;
/// Defined tags: namespace → key → value.
pub type DefinedTags = BTreeMap<String, BTreeMap<String, serde_json::Value>>;

/// The lifecycle of a console connection.
///
/// consolegate writes a record as ACTIVE in one step (it is usable the moment
/// it is returned); deletion moves it to DELETED. CREATING, DELETING and FAILED
/// exist because the OCI resource defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LifecycleState {
    /// Being set up.
    Creating,
    /// Usable.
    Active,
    /// Being torn down; no longer usable.
    Deleting,
    /// Gone; kept readable for a while.
    Deleted,
    /// Could not be set up.
    Failed,
}

impl LifecycleState {
    /// The OCI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleState::Creating => "CREATING",
            LifecycleState::Active => "ACTIVE",
            LifecycleState::Deleting => "DELETING",
            LifecycleState::Deleted => "DELETED",
            LifecycleState::Failed => "FAILED",
        }
    }
}

impl fmt::Display for LifecycleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LifecycleState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "CREATING" => LifecycleState::Creating,
            "ACTIVE" => LifecycleState::Active,
            "DELETING" => LifecycleState::Deleting,
            "DELETED" => LifecycleState::Deleted,
            "FAILED" => LifecycleState::Failed,
            other => return Err(format!("unknown lifecycle state `{other}`")),
        })
    }
}

/// A console connection as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionRecord {
    /// Unguessable id; the outer hop's SSH user name.
    pub id: String,
    /// The instance's compartment.
    pub compartment_id: String,
    /// The instance.
    pub instance_id: String,
    /// Lifecycle state.
    pub lifecycle_state: LifecycleState,
    /// The registered client key, `<type> <base64>`.
    pub public_key: String,
    /// Its `SHA256:` fingerprint.
    pub fingerprint: String,
    /// Free-form tags.
    pub freeform_tags: FreeformTags,
    /// Defined tags.
    pub defined_tags: DefinedTags,
    /// When it was created.
    pub time_created: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_states_round_trip() {
        for s in ["CREATING", "ACTIVE", "DELETING", "DELETED", "FAILED"] {
            assert_eq!(s.parse::<LifecycleState>().unwrap().as_str(), s);
        }
        assert!("active".parse::<LifecycleState>().is_err());
    }
}
