//! Step 3 of the reconcile: apply the children. IO.
//!
//! Reads the built [`Children`] and the [`ValidatedCluster`]; server-side applies every child under the one
//! field manager [`FIELD_MANAGER`] with `force`, in dependency order: RBAC → Secrets/ConfigMap → Lease →
//! Services → PDB → StatefulSet last, so a pod never starts before what it mounts and reads exists.
//! Two exceptions are created when absent and never written again: the Secrets (never overwritten, never
//! logged) and the Lease, whose record belongs to the sidecars once it exists.
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
    build::{Child, Children, secrets, services},
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

/// Creates `obj` unless it exists: for the children whose content is someone else's once they exist
/// (the Lease: see [`crate::build::build_lease`]).
async fn create_if_absent<K>(client: &Client, ns: &str, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let name = obj.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&params, obj).await {
        Ok(_) => {
            info!(kind = %K::kind(&()), %name, "created");
            Ok(())
        }
        Err(e) if is_status(&e, 409) => Ok(()),
        Err(source) => Err(Error::Apply {
            kind: K::kind(&()).into_owned(),
            name,
            source,
        }),
    }
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
    let mut hasher = DefaultHasher::new();
    for child in children.in_apply_order() {
        child.to_json()?.hash(&mut hasher);
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

async fn child_exists(client: &Client, ns: &str, child: Child<'_>) -> Result<bool, Error> {
    let name = child.meta().name.clone().unwrap_or_default();
    match child {
        Child::ServiceAccount(_) => exists::<ServiceAccount>(client, ns, &name).await,
        Child::Role(_) => exists::<Role>(client, ns, &name).await,
        Child::RoleBinding(_) => exists::<RoleBinding>(client, ns, &name).await,
        Child::ConfigMap(_) => exists::<ConfigMap>(client, ns, &name).await,
        Child::Lease(_) => exists::<Lease>(client, ns, &name).await,
        Child::Service(_) => exists::<Service>(client, ns, &name).await,
        Child::Pdb(_) => exists::<PodDisruptionBudget>(client, ns, &name).await,
        Child::StatefulSet(_) => exists::<StatefulSet>(client, ns, &name).await,
    }
}

async fn apply_child(client: &Client, ns: &str, child: Child<'_>) -> Result<(), Error> {
    match child {
        Child::ServiceAccount(o) => ssa(client, ns, o).await.map(drop),
        Child::Role(o) => ssa(client, ns, o).await.map(drop),
        Child::RoleBinding(o) => ssa(client, ns, o).await.map(drop),
        Child::ConfigMap(o) => ssa(client, ns, o).await.map(drop),
        Child::Lease(o) => create_if_absent(client, ns, o).await,
        Child::Service(o) => ssa(client, ns, o).await.map(drop),
        Child::Pdb(o) => ssa(client, ns, o).await.map(drop),
        Child::StatefulSet(o) => ssa(client, ns, o).await.map(drop),
    }
}

/// Whether a child or a Secret of the cluster is missing (deleted by someone): reads only.
pub async fn any_missing(
    client: &Client,
    c: &ValidatedCluster,
    children: &Children,
) -> Result<bool, Error> {
    let ns = c.namespace.as_str();
    for child in children.in_apply_order() {
        if !child_exists(client, ns, child).await? {
            return Ok(true);
        }
    }
    for kind in SECRET_KINDS {
        if !exists::<Secret>(client, ns, &contract::secret_name(&c.name, kind)).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Applies every child in [`Children::in_apply_order`], with what must happen between them: the
/// Secrets created before the ConfigMap, the disabled client Services deleted once the enabled ones are
/// applied, the StatefulSet's replicas read just before it is applied.
pub async fn apply(
    client: &Client,
    c: &ValidatedCluster,
    children: &Children,
) -> Result<Applied, Error> {
    let ns = c.namespace.as_str();
    let mut applied = Applied::default();
    for child in children.in_apply_order() {
        match child {
            Child::ConfigMap(_) => applied.created_secrets = ensure_secrets(client, c).await?,
            Child::Pdb(_) => delete_disabled_services(client, c).await?,
            Child::StatefulSet(_) => {
                applied.previous_replicas = statefulset_replicas(client, c).await?
            }
            _ => {}
        }
        apply_child(client, ns, child).await?;
    }
    Ok(applied)
}

/// `spec.replicas` of the cluster's StatefulSet; `None` when there is none yet.
async fn statefulset_replicas(client: &Client, c: &ValidatedCluster) -> Result<Option<i32>, Error> {
    let sts = Api::<StatefulSet>::namespaced(client.clone(), &c.namespace)
        .get_opt(&c.name)
        .await
        .map_err(|source| Error::Read {
            kind: "StatefulSet".into(),
            name: c.name.clone(),
            source,
        })?;
    Ok(sts.and_then(|s| s.spec.replicas))
}

/// Server-side apply never deletes: a client Service the spec no longer asks for is deleted here, and only
/// if this cluster owns it.
async fn delete_disabled_services(client: &Client, c: &ValidatedCluster) -> Result<(), Error> {
    let api: Api<Service> = Api::namespaced(client.clone(), &c.namespace);
    for svc in services::CLIENT_SERVICES {
        if services::enabled(c, svc.suffix) {
            continue;
        }
        let name = format!("{}-{}", c.name, svc.suffix);
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
