//! Identifiers. Names are user-chosen strings, shared (`Arc<str>`) because plans and
//! assignments copy them by the thousand per cycle; job ids are assigned by the state machine
//! in submission order, so every replica assigns the same id to the same job.
//!
//! Two names that share their string (one was cloned from the other, as the state arranges for
//! its jobs' teams and its assignments' nodes) compare equal without reading it; otherwise
//! they compare as strings (bytewise, which is the order of `str`).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Eq, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Arc<str>);

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
            }
        }

        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.0.hash(state);
            }
        }

        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                if Arc::ptr_eq(&self.0, &other.0) {
                    return std::cmp::Ordering::Equal;
                }
                let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
                match (a.first(), b.first()) {
                    // Names that differ in their first byte (most team names) are ordered
                    // without a call to compare the rest.
                    (Some(x), Some(y)) if x != y => x.cmp(y),
                    _ => a.cmp(b),
                }
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl $name {
            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.into())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s.into())
            }
        }
    };
}

name_id!(
    /// A compute node, named by its agent (usually the host name).
    NodeId
);
name_id!(
    /// A team: the unit that owns quota.
    TeamId
);
name_id!(
    /// A device's stable identity: the GPU UUID, or a stable device path.
    DeviceId
);

/// A job, numbered by the state machine from 1 in submission order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::TeamId;
    use proptest::prelude::*;
    use std::cmp::Ordering;

    proptest! {
        #[test]
        fn names_are_ordered_as_their_strings(a in "[ab\u{e9}]{0,3}", b in "[ab\u{e9}]{0,3}") {
            prop_assert_eq!(TeamId::from(a.as_str()).cmp(&TeamId::from(b.as_str())), a.cmp(&b));
        }
    }

    #[test]
    fn names_compare_as_strings_shared_or_not() {
        let a = TeamId::from("vision");
        assert_eq!(a.cmp(&a.clone()), Ordering::Equal);
        assert_eq!(a, TeamId::from("vision"), "equal strings in two allocations are equal");
        assert_eq!(a.cmp(&TeamId::from("vision")), Ordering::Equal);
        assert_eq!(a.cmp(&TeamId::from("nlp")), Ordering::Greater);
        assert!(TeamId::from("a") < TeamId::from("ab"));
        assert_ne!(a, TeamId::from("visio"));
    }
}
