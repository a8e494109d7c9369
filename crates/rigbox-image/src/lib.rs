//! Rigbox guest image pipeline.
//!
//! Builds, from Debian packages only, everything a workspace boots from:
//! a guest kernel from `linux-source-6.1` with the project's config fragment
//! (`images/kernel/`), a Debian 12 root filesystem by `debootstrap`
//! (`images/rootfs/`), template layers (`images/templates/*.toml`), and the
//! final ext4 images made with `mkfs.ext4 -d` (no loop mounts). Artifacts are
//! cached under a key of their recipe; see [`pipeline`] for the layout.
#![warn(missing_docs)]

pub mod pipeline;
pub mod progress;
pub mod recipe;

pub use pipeline::{debian_mirror, linux_source_version, which, GuestImage, ImageCache, ImageError, Pipeline};
pub use progress::{Progress, Step};
pub use recipe::{RecipeError, RecipeSet, TemplateApp, TemplateRecipe, TemplateScript, TemplateService, ToolRecipe};
