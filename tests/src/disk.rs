//! A small disk of its own for one directory: a tmpfs of a given size
//! mounted over it (its contents copied in), which a test can fill to the
//! last byte and free again. Mounting needs root, as CI runs; without it
//! the test fails saying so.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct SmallDisk {
    at: PathBuf,
    filler: PathBuf,
}

impl SmallDisk {
    /// Mount a tmpfs of `size` (e.g. `"8m"`) over `dir`, holding what
    /// `dir` held.
    pub fn over(dir: &Path, size: &str) -> SmallDisk {
        let aside = dir.with_extension("before-small-disk");
        std::fs::rename(dir, &aside).unwrap();
        std::fs::create_dir(dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            mounted.status.success(),
            "mounting a {size} tmpfs over {} (this test needs root, as CI runs): {}",
            dir.display(),
            String::from_utf8_lossy(&mounted.stderr)
        );
        let copied = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", aside.display()))
            .arg(dir)
            .status()
            .expect("running cp");
        assert!(
            copied.success(),
            "copying {} onto the small disk",
            aside.display()
        );
        std::fs::remove_dir_all(&aside).unwrap();
        SmallDisk {
            at: dir.to_path_buf(),
            filler: dir.join("filler"),
        }
    }

    /// Write until the disk refuses: no byte is left.
    pub fn fill(&self) {
        let mut file = std::fs::File::create(&self.filler).unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            match file.write_all(&chunk).and_then(|()| file.sync_all()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", self.filler.display()),
            }
        }
        assert!(
            std::fs::write(self.at.join("probe"), b"x").is_err(),
            "{} is full",
            self.at.display()
        );
    }

    /// Give the space back.
    pub fn free(&self) {
        std::fs::remove_file(&self.filler).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}
