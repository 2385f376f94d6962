//! The cluster's credentials: one Secret per kind in [`contract::SECRET_KINDS`], each with `username` and
//! `password`. Passwords are random and generated once: the apply step creates a Secret only when it is
//! absent and never overwrites it, so a reconcile can never rotate a password behind PostgreSQL's back.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use pgpilot_crds::contract;
use rand::{Rng, RngExt, distr::Alphanumeric};

use super::meta;
use crate::validate::ValidatedCluster;

/// Length of generated passwords (alphanumeric: safe in connection strings and pgpass files).
pub const PASSWORD_LEN: usize = 32;

/// The role name stored in the Secret of `kind`.
pub fn username(c: &ValidatedCluster, kind: &str) -> String {
    match kind {
        "superuser" => "postgres".into(),
        "replication" => "replicator".into(),
        "app" => c.spec.bootstrap.owner.clone(),
        _ => "pgpilot".into(),
    }
}

pub fn random_password(rng: &mut impl Rng) -> String {
    rng.sample_iter(&Alphanumeric)
        .take(PASSWORD_LEN)
        .map(char::from)
        .collect()
}

/// The Secret of `kind` holding `password`.
pub fn build_secret(c: &ValidatedCluster, kind: &str, password: String) -> Secret {
    Secret {
        metadata: meta(c, contract::secret_name(&c.name, kind)),
        type_: Some("kubernetes.io/basic-auth".into()),
        string_data: Some(BTreeMap::from([
            ("username".to_owned(), username(c, kind)),
            ("password".to_owned(), password),
        ])),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{testutil::cluster_from_yaml, validate::validate};

    #[test]
    fn secrets_hold_username_and_password() {
        let c = validate(
            &cluster_from_yaml("bootstrap: {owner: shopper, database: shop}"),
            "s",
        )
        .unwrap();
        let s = build_secret(&c, "app", "pw".into());
        assert_eq!(s.metadata.name.as_deref(), Some("pg-app"));
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/basic-auth"));
        let data = s.string_data.unwrap();
        assert_eq!(
            (data["username"].as_str(), data["password"].as_str()),
            ("shopper", "pw")
        );
        let users: Vec<String> = contract::SECRET_KINDS
            .iter()
            .map(|k| username(&c, k))
            .collect();
        assert_eq!(users, ["postgres", "replicator", "shopper", "pgpilot"]);
    }

    #[test]
    fn passwords_are_long_random_and_alphanumeric() {
        let mut rng = rand::rng();
        let a = random_password(&mut rng);
        let b = random_password(&mut rng);
        assert_eq!(a.len(), PASSWORD_LEN);
        assert!(a.chars().all(|ch| ch.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
