//! The real filesystem behind the policy crate's [`FsView`].

use std::path::{Path, PathBuf};

use cowork_policy::fs_view::FsView;
use rustix::fs::{Access, access};

#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

impl FsView for RealFs {
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn is_executable_file(&self, path: &Path) -> bool {
        path.metadata().is_ok_and(|m| m.is_file()) && access(path, Access::EXEC_OK).is_ok()
    }

    fn canonicalize(&self, path: &Path) -> Option<PathBuf> {
        std::fs::canonicalize(path).ok()
    }

    fn read_link(&self, path: &Path) -> Option<PathBuf> {
        std::fs::read_link(path).ok()
    }
}
