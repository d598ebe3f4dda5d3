//! The device's private key in a local file, readable only by its owner (mode 0600).
//!
//! The format is the one `commucat keygen` writes: 64 hex digits and a newline.

use dp_core::Rng;
use dp_noise::StaticKeypair;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Reads the key in `path`, or creates one there (mode 0600) from `rng` if the file does not
/// exist.
///
/// # Errors
///
/// The file cannot be read or written, is not a key file, or can be read by others than its
/// owner.
pub fn load_or_create(path: &Path, rng: &mut impl Rng) -> io::Result<StaticKeypair> {
    match load(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => create(path, rng),
        other => other,
    }
}

/// Writes a new key pair to `path` (which must not exist yet) with mode 0600.
///
/// # Errors
///
/// The file exists or cannot be written.
pub fn create(path: &Path, rng: &mut impl Rng) -> io::Result<StaticKeypair> {
    let pair = StaticKeypair::generate(rng);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    // `mode` is filtered by the umask; make sure the result is exactly 0600.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    writeln!(file, "{}", hex::encode(pair.private()))?;
    file.sync_all()?;
    Ok(pair)
}

/// Reads the key in `path`. Refuses a file that its group or others may read or write, since
/// the key is the device's identity.
///
/// # Errors
///
/// The file cannot be read, has loose permissions, or does not hold 64 hex digits.
pub fn load(path: &Path) -> io::Result<StaticKeypair> {
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} has mode {:o}; a key file must be readable by its owner only (chmod 600)",
                path.display(),
                mode & 0o777
            ),
        ));
    }
    let text = std::fs::read_to_string(path)?;
    let invalid = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a key file: expected 64 hex digits",
                path.display()
            ),
        )
    };
    let bytes = hex::decode(text.trim()).map_err(|_| invalid())?;
    let private: [u8; 32] = bytes.try_into().map_err(|_| invalid())?;
    Ok(StaticKeypair::from_private(private))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dp_core::SeededRng;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("commucat-client-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_new_key_file_is_0600_and_reads_back_the_same_key() {
        let dir = temp_dir("keyfile");
        let path = dir.join("device.key");
        let mut rng = SeededRng::new(3);
        let created = load_or_create(&path, &mut rng).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = load_or_create(&path, &mut rng).unwrap();
        assert_eq!(loaded.public(), created.public());
        assert!(create(&path, &mut rng).is_err(), "create never overwrites");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = temp_dir("loose");
        let path = dir.join("device.key");
        create(&path, &mut SeededRng::new(4)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load(&path).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
        std::fs::write(dir.join("bad.key"), "not hex\n").unwrap();
        std::fs::set_permissions(dir.join("bad.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        assert_eq!(
            load(&dir.join("bad.key")).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
