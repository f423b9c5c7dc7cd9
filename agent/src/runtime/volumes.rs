//! Volumes of Docker replicas: each replica slot's own named volumes, made
//! by the engine on first use and kept across the slot's containers, and
//! the host volumes this node offers, bind-mounted.

use std::collections::{BTreeMap, HashMap};

use bollard::Docker;
use bollard::models::{Mount, MountType, MountVolumeOptions};
use bollard::query_parameters::RemoveVolumeOptions;
use flotilla_api::spec::slot_volume_name;
use flotilla_api::{Allocation, HostVolume, WorkloadSpec};

use super::RuntimeError;
use super::docker::{LABEL_NODE, LABEL_WORKLOAD};

/// On every slot volume, so `docker volume ls` tells whose it is.
pub const LABEL_SLOT: &str = "flotilla.slot";
pub const LABEL_VOLUME: &str = "flotilla.volume";

/// The mounts of one replica: its slot's named volumes (labelled, so the
/// engine creates them with their owner written on them) and the node's
/// host volumes, read-only where the spec or the node's offer says so.
pub fn mounts(
    spec: &WorkloadSpec,
    allocation: &Allocation,
    node: &str,
    offers: &BTreeMap<String, HostVolume>,
) -> Result<Vec<Mount>, RuntimeError> {
    spec.volumes
        .iter()
        .map(|volume| {
            if volume.host {
                let offer = offers.get(volume.name.as_str()).ok_or_else(|| {
                    RuntimeError::Volume(format!("host volume `{}` is not offered by this node", volume.name))
                })?;
                return Ok(Mount {
                    target: Some(volume.path.clone()),
                    source: Some(offer.path.clone()),
                    typ: Some(MountType::BIND),
                    read_only: Some(volume.read_only || offer.read_only),
                    ..Mount::default()
                });
            }
            let labels = HashMap::from([
                (LABEL_WORKLOAD.to_owned(), allocation.workload.to_string()),
                (LABEL_SLOT.to_owned(), allocation.replica.to_string()),
                (LABEL_VOLUME.to_owned(), volume.name.to_string()),
                (LABEL_NODE.to_owned(), node.to_owned()),
            ]);
            Ok(Mount {
                target: Some(volume.path.clone()),
                source: Some(slot_volume_name(&allocation.workload, allocation.replica, &volume.name)),
                typ: Some(MountType::VOLUME),
                read_only: Some(volume.read_only),
                volume_options: Some(MountVolumeOptions { labels: Some(labels), ..Default::default() }),
                ..Mount::default()
            })
        })
        .collect()
}

/// Removes one slot volume the servers asked this node to remove. Gone
/// already is done; in use (a container of its workload is still being
/// stopped) is an error, and the agent tries again later.
pub async fn remove(docker: &Docker, name: &str) -> Result<(), RuntimeError> {
    match docker.remove_volume(name, None::<RemoveVolumeOptions>).await {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
        Err(e) => Err(RuntimeError::Volume(format!("cannot remove volume {name}: {e}"))),
    }
}
