//! A base image built on this host, for a machine with no registry: the
//! static busybox binary from the host's `busybox-static` package, copied
//! into an image `FROM scratch`. The examples and tests run on it.

use bollard::Docker;
use bollard::query_parameters::BuildImageOptionsBuilder;
use bytes::Bytes;
use futures_util::StreamExt;

use super::RuntimeError;

/// The image the examples use.
pub const BUSYBOX_IMAGE: &str = "flotilla/busybox:latest";

const DOCKERFILE: &str = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nENV PATH=/bin\nCMD [\"sh\"]\n";

/// Where Debian's busybox-static puts the binary.
const BUSYBOX_PATHS: [&str; 2] = ["/bin/busybox", "/usr/bin/busybox"];

/// Builds `tag` from the host's static busybox unless the engine has it.
pub async fn ensure_busybox_image(docker: &Docker, tag: &str) -> Result<(), RuntimeError> {
    if docker.inspect_image(tag).await.is_ok() {
        return Ok(());
    }
    let binary = BUSYBOX_PATHS.iter().find_map(|p| std::fs::read(p).ok()).ok_or_else(|| {
        RuntimeError::ImageMissing(format!(
            "{tag} (and no /bin/busybox to build it from: install busybox-static)"
        ))
    })?;
    build(docker, tag, &[("Dockerfile", DOCKERFILE.as_bytes(), 0o644), ("busybox", &binary, 0o755)]).await?;
    tracing::info!(image = tag, "built the base image from the host's busybox");
    Ok(())
}

/// Builds `tag` from a context of files (path in the context, bytes, mode);
/// one of them is the Dockerfile.
pub async fn build(docker: &Docker, tag: &str, files: &[(&str, &[u8], u32)]) -> Result<(), RuntimeError> {
    let options = BuildImageOptionsBuilder::default().t(tag).rm(true).forcerm(true).build();
    let mut build = docker.build_image(options, None, Some(bollard::body_full(Bytes::from(tar(files)))));
    while let Some(step) = build.next().await {
        let step = step.map_err(|e| RuntimeError::Docker(format!("building {tag}: {e}")))?;
        if let Some(error) = step.error_detail.and_then(|d| d.message) {
            return Err(RuntimeError::Docker(format!("building {tag}: {error}")));
        }
    }
    Ok(())
}

/// A ustar archive of regular files (names up to 100 bytes): all a build
/// context, or a replica's secret files, need.
pub(crate) fn tar(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data, mode) in files {
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |field: &mut [u8], value: u64| {
            let text = format!("{value:0width$o}\0", width = field.len() - 1);
            field.copy_from_slice(text.as_bytes());
        };
        octal(&mut header[100..108], u64::from(*mode));
        octal(&mut header[108..116], 0);
        octal(&mut header[116..124], 0);
        octal(&mut header[124..136], data.len() as u64);
        octal(&mut header[136..148], 0);
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_headers_have_valid_checksums_and_padding() {
        let archive = tar(&[("Dockerfile", b"FROM scratch\n", 0o644)]);
        assert_eq!(archive.len(), 512 + 512 + 1024);
        let header = &archive[..512];
        assert_eq!(&header[..10], b"Dockerfile");
        let stored =
            u32::from_str_radix(std::str::from_utf8(&header[148..154]).expect("ascii"), 8).expect("octal");
        let mut blank = header.to_vec();
        blank[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, blank.iter().map(|b| u32::from(*b)).sum::<u32>());
        assert_eq!(&archive[512..525], b"FROM scratch\n");
    }
}
