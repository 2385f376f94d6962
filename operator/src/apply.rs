//! Step 3 of the reconcile: apply the children. IO.
//!
//! Reads the built [`Children`] and the [`ValidatedCluster`]; server-side applies every child under the one
//! field manager [`FIELD_MANAGER`] with `force`, in dependency order: RBAC → Secrets/ConfigMap → Lease →
//! Services → PDB → StatefulSet last, so a pod never starts before what it mounts and reads exists.
//! Secrets are the exception: created when absent, never applied, never overwritten, never logged.
//! Returns what the status step needs to know about the change ([`Applied`]).

use std::{
    fmt::Debug,
    hash::{DefaultHasher, Hash, Hasher},
};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::StatefulSet,
        coordination::v1::Lease,
        core::v1::{ConfigMap, Secret, Service, ServiceAccount},
        policy::v1::PodDisruptionBudget,
        rbac::v1::{Role, RoleBinding},
    },
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use pgpilot_crds::contract::{self, FIELD_MANAGER, SECRET_KINDS};
use serde::{Serialize, de::DeserializeOwned};
use tracing::{debug, info};

use crate::{
    build::{Children, secrets, services},
    validate::ValidatedCluster,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("applying {kind} {name}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading {kind} {name}")]
    Read {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("creating Secret {name}")]
    CreateSecret {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting disabled Service {name}")]
    DeleteService {
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// Names the variant and the object kind: the metric label and the Event reason.
    pub fn category(&self) -> String {
        match self {
            Self::Apply { kind, .. } => format!("Apply{kind}Failed"),
            Self::Read { kind, .. } => format!("Read{kind}Failed"),
            Self::CreateSecret { .. } => "CreateSecretFailed".into(),
            Self::DeleteService { .. } => "DeleteServiceFailed".into(),
        }
    }
}

/// What changed, as far as the status step cares.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    /// `spec.replicas` of the StatefulSet before this apply; `None` when it was created now.
    pub previous_replicas: Option<i32>,
    /// Secrets created in this pass (kinds).
    pub created_secrets: Vec<&'static str>,
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

async fn ssa<K>(client: &Client, ns: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let name = obj.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await
        .map_err(|source| Error::Apply {
            kind: K::kind(&()).into_owned(),
            name: name.clone(),
            source,
        })?;
    debug!(kind = %K::kind(&()), %name, "applied");
    Ok(applied)
}

/// Creates each of the cluster's Secrets that does not exist yet, with a fresh random password.
async fn ensure_secrets(client: &Client, c: &ValidatedCluster) -> Result<Vec<&'static str>, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &c.namespace);
    let mut created = Vec::new();
    for kind in SECRET_KINDS {
        let name = contract::secret_name(&c.name, kind);
        let existing = api
            .get_metadata_opt(&name)
            .await
            .map_err(|source| Error::Read {
                kind: "Secret".into(),
                name: name.clone(),
                source,
            })?;
        if existing.is_some() {
            continue;
        }
        let secret = secrets::build_secret(c, kind, secrets::random_password(&mut rand::rng()));
        match api
            .create(
                &PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PostParams::default()
                },
                &secret,
            )
            .await
        {
            Ok(_) => {
                info!(secret = %name, "created secret");
                created.push(kind);
            }
            // Someone (another operator replica, a user restoring a backup) was first: theirs stays.
            Err(e) if is_status(&e, 409) => {}
            Err(source) => return Err(Error::CreateSecret { name, source }),
        }
    }
    Ok(created)
}

/// A fingerprint of the built children: equal fingerprints mean applying again would change nothing the
/// operator owns, so the reconcile can skip the apply (server-side apply of an unchanged object is still
/// an API write request).
pub fn fingerprint(children: &Children) -> Result<u64, serde_json::Error> {
    let Children {
        service_account,
        role,
        role_binding,
        config_map,
        lease,
        services,
        pdb,
        statefulset,
    } = children;
    let mut hasher = DefaultHasher::new();
    for json in [
        serde_json::to_vec(service_account)?,
        serde_json::to_vec(role)?,
        serde_json::to_vec(role_binding)?,
        serde_json::to_vec(config_map)?,
        serde_json::to_vec(lease)?,
        serde_json::to_vec(services)?,
        serde_json::to_vec(pdb)?,
        serde_json::to_vec(statefulset)?,
    ] {
        json.hash(&mut hasher);
    }
    Ok(hasher.finish())
}

async fn exists<K>(client: &Client, ns: &str, name: &str) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let found = api
        .get_metadata_opt(name)
        .await
        .map_err(|source| Error::Read {
            kind: K::kind(&()).into_owned(),
            name: name.to_owned(),
            source,
        })?;
    Ok(found.is_some())
}

/// Whether a child or a Secret of the cluster is missing (deleted by someone): reads only.
pub async fn any_missing(
    client: &Client,
    c: &ValidatedCluster,
    children: &Children,
) -> Result<bool, Error> {
    let Children {
        service_account,
        role,
        role_binding,
        config_map,
        lease,
        services,
        pdb,
        statefulset,
    } = children;
    let ns = c.namespace.as_str();
    let mut present = exists::<ServiceAccount>(client, ns, &service_account.name_any()).await?
        && exists::<Role>(client, ns, &role.name_any()).await?
        && exists::<RoleBinding>(client, ns, &role_binding.name_any()).await?
        && exists::<ConfigMap>(client, ns, &config_map.name_any()).await?
        && exists::<Lease>(client, ns, &lease.name_any()).await?
        && exists::<PodDisruptionBudget>(client, ns, &pdb.name_any()).await?
        && exists::<StatefulSet>(client, ns, &statefulset.name_any()).await?;
    for svc in services {
        present = present && exists::<Service>(client, ns, &svc.name_any()).await?;
    }
    for kind in SECRET_KINDS {
        present =
            present && exists::<Secret>(client, ns, &contract::secret_name(&c.name, kind)).await?;
    }
    Ok(!present)
}

/// Applies every child; the bundle is destructured without `..` so a new child cannot be skipped silently.
pub async fn apply(
    client: &Client,
    c: &ValidatedCluster,
    children: Children,
) -> Result<Applied, Error> {
    let Children {
        service_account,
        role,
        role_binding,
        config_map,
        lease,
        services,
        pdb,
        statefulset,
    } = children;
    let ns = c.namespace.as_str();

    ssa(client, ns, &service_account).await?;
    ssa(client, ns, &role).await?;
    ssa(client, ns, &role_binding).await?;
    let created_secrets = ensure_secrets(client, c).await?;
    ssa(client, ns, &config_map).await?;
    ssa(client, ns, &lease).await?;
    for svc in &services {
        ssa(client, ns, svc).await?;
    }
    delete_disabled_services(client, c).await?;
    ssa(client, ns, &pdb).await?;

    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let previous_replicas = sts_api
        .get_opt(&c.name)
        .await
        .map_err(|source| Error::Read {
            kind: "StatefulSet".into(),
            name: c.name.clone(),
            source,
        })?
        .and_then(|s| s.spec.replicas);
    ssa(client, ns, &statefulset).await?;
    Ok(Applied {
        previous_replicas,
        created_secrets,
    })
}

/// Server-side apply never deletes: a client Service the spec no longer asks for is deleted here, and only
/// if this cluster owns it.
async fn delete_disabled_services(client: &Client, c: &ValidatedCluster) -> Result<(), Error> {
    let api: Api<Service> = Api::namespaced(client.clone(), &c.namespace);
    for (suffix, _) in services::CLIENT_SERVICES {
        if services::enabled(c, suffix) {
            continue;
        }
        let name = format!("{}-{suffix}", c.name);
        let existing = api
            .get_metadata_opt(&name)
            .await
            .map_err(|source| Error::Read {
                kind: "Service".into(),
                name: name.clone(),
                source,
            })?;
        let owned =
            existing.is_some_and(|m| m.owner_references().iter().any(|o| o.uid == c.owner.uid));
        if !owned {
            continue;
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => info!(service = %name, "deleted disabled service"),
            Err(e) if is_status(&e, 404) => {}
            Err(source) => return Err(Error::DeleteService { name, source }),
        }
    }
    Ok(())
}
