//! Recipes: what the pipeline builds, and the hashes that key the cache.
//!
//! Every artifact is keyed by a SHA-256 over everything that determines its
//! content (recipe files, the key of the layer below, the builder's own
//! format version). An unchanged recipe gives an unchanged key, so a second
//! build finds the artifact and rebuilds nothing.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/recipes.rs"));
}

/// Bumped when the pipeline changes how it turns a recipe into an artifact.
const KERNEL_FORMAT: &str = "rigbox-kernel-v1";
const ROOTFS_FORMAT: &str = "rigbox-rootfs-v1";
const TEMPLATE_FORMAT: &str = "rigbox-template-v1";
const IMAGE_FORMAT: &str = "rigbox-image-v1";

/// Errors reading or parsing recipes.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// A recipe file is missing from the embedded set.
    #[error("Recipe file {0} is missing")]
    Missing(String),
    /// A template TOML did not parse.
    #[error("Template recipe {file} is invalid: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// No template with this id.
    #[error("Unknown template {0:?}")]
    UnknownTemplate(String),
}

/// The whole set of recipes (embedded at build time, optionally extended by a
/// directory of extra template files).
#[derive(Debug, Clone)]
pub struct RecipeSet {
    files: BTreeMap<String, String>,
    templates: BTreeMap<String, TemplateRecipe>,
    tools: BTreeMap<String, ToolRecipe>,
}

/// A tool of the catalog (`images/tools/*.toml`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ToolRecipe {
    /// Stable id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Icon name.
    pub icon: String,
    /// Category.
    pub category: String,
    /// Port it listens on in the guest.
    pub port: u16,
    /// Its route is `<suffix>-<workspace id>.<base domain>`.
    pub subdomain_suffix: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Commands whose presence means it is installed.
    pub commands: Vec<String>,
    /// Shell run as root to install it.
    pub install: String,
    /// Command line run as developer to serve it.
    pub launch: String,
}

/// The base Debian root filesystem recipe (`images/rootfs/base.toml`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RootfsRecipe {
    /// Debian suite, e.g. `bookworm`.
    pub suite: String,
    /// debootstrap variant.
    pub variant: String,
    /// Packages included by debootstrap.
    pub packages: Vec<String>,
}

/// An expected app of a template (routed when a workspace is deployed from it).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct TemplateApp {
    /// App name suffix.
    pub name: String,
    /// Port inside the workspace.
    pub port: u16,
    /// Protocol (`http`).
    #[serde(default = "default_protocol")]
    pub protocol: String,
}

fn default_protocol() -> String {
    "http".into()
}

/// A backing service a template runs (systemd unit with a health command).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct TemplateService {
    /// Service name.
    pub name: String,
    /// Kind, e.g. `postgres`.
    pub kind: String,
    /// The systemd unit.
    pub unit: String,
    /// Health command run inside the guest.
    pub health_cmd: String,
    /// Port, if it listens on one.
    pub port: Option<u16>,
}

/// A workspace template (`images/templates/*.toml`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct TemplateRecipe {
    /// Stable id (`base`, `dev`, ...).
    pub id: String,
    /// Display name.
    pub name: String,
    /// One-line description.
    pub description: String,
    /// RAM floor in MiB.
    pub min_ram_mb: u32,
    /// vCPU floor.
    pub min_vcpu: u32,
    /// Disk floor in MiB.
    pub min_disk_mb: u32,
    /// Debian packages layered on the base rootfs.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Shell run in the image (as root, in a chroot) after the packages.
    #[serde(default)]
    pub build_script: Option<String>,
    /// Commands that must succeed inside a workspace of this template.
    #[serde(default)]
    pub verify: Vec<String>,
    /// Apps the template is expected to serve.
    #[serde(default)]
    pub expected_apps: Vec<TemplateApp>,
    /// Backing services.
    #[serde(default)]
    pub services: Vec<TemplateService>,
    /// Setup scripts every workspace of the template runs before the user's.
    #[serde(default)]
    pub setup_scripts: Vec<TemplateScript>,
}

/// A template's own setup script.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct TemplateScript {
    /// Name.
    pub name: String,
    /// Shell script (runs as developer, with sudo).
    pub content: String,
    /// `first_boot` (default) or `every_start`.
    #[serde(default = "first_boot")]
    pub run_on: String,
}

fn first_boot() -> String {
    "first_boot".into()
}

impl RecipeSet {
    /// The recipes compiled into this binary.
    pub fn embedded() -> Result<Self, RecipeError> {
        let files: BTreeMap<String, String> = embedded::RECIPE_FILES
            .iter()
            .map(|(p, c)| ((*p).to_string(), (*c).to_string()))
            .collect();
        let mut set = RecipeSet {
            files,
            templates: BTreeMap::new(),
            tools: BTreeMap::new(),
        };
        let tool_files: Vec<(String, String)> = set
            .files
            .iter()
            .filter(|(p, _)| p.starts_with("tools/") && p.ends_with(".toml"))
            .map(|(p, c)| (p.clone(), c.clone()))
            .collect();
        for (path, content) in tool_files {
            let t: ToolRecipe = toml::from_str(&content).map_err(|e| RecipeError::Invalid { file: path.clone(), message: e.to_string() })?;
            set.tools.insert(t.id.clone(), t);
        }
        let tpl_files: Vec<(String, String)> = set
            .files
            .iter()
            .filter(|(p, _)| p.starts_with("templates/") && p.ends_with(".toml"))
            .map(|(p, c)| (p.clone(), c.clone()))
            .collect();
        for (path, content) in tpl_files {
            set.add_template(&path, &content)?;
        }
        Ok(set)
    }

    /// Adds every `*.toml` in `dir` as a template (operators' own templates).
    pub fn with_template_dir(mut self, dir: &std::path::Path) -> Result<Self, RecipeError> {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Ok(self);
        };
        let mut paths: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
            let content = std::fs::read_to_string(&p).map_err(|e| RecipeError::Invalid {
                file: p.display().to_string(),
                message: e.to_string(),
            })?;
            let key = format!("templates/{}", p.file_name().unwrap_or_default().to_string_lossy());
            self.files.insert(key.clone(), content.clone());
            self.add_template(&key, &content)?;
        }
        Ok(self)
    }

    fn add_template(&mut self, path: &str, content: &str) -> Result<(), RecipeError> {
        let t: TemplateRecipe = toml::from_str(content).map_err(|e| RecipeError::Invalid {
            file: path.to_string(),
            message: e.to_string(),
        })?;
        if !t.id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') || t.id.is_empty() {
            return Err(RecipeError::Invalid {
                file: path.into(),
                message: format!("id {:?} must be lowercase letters, digits and dashes", t.id),
            });
        }
        self.templates.insert(t.id.clone(), t);
        Ok(())
    }

    fn file(&self, rel: &str) -> Result<&str, RecipeError> {
        self.files
            .get(rel)
            .map(String::as_str)
            .ok_or_else(|| RecipeError::Missing(rel.into()))
    }

    /// The kernel config fragment.
    pub fn kernel_fragment(&self) -> Result<&str, RecipeError> {
        self.file("kernel/rbx-microvm.fragment")
    }

    /// The base rootfs recipe.
    pub fn rootfs(&self) -> Result<RootfsRecipe, RecipeError> {
        toml::from_str(self.file("rootfs/base.toml")?).map_err(|e| RecipeError::Invalid {
            file: "rootfs/base.toml".into(),
            message: e.to_string(),
        })
    }

    /// The script run inside the debootstrapped tree.
    pub fn rootfs_configure_script(&self) -> Result<&str, RecipeError> {
        self.file("rootfs/configure.sh")
    }

    /// Files copied verbatim into the rootfs (path relative to `/`, contents).
    pub fn rootfs_overlay(&self) -> impl Iterator<Item = (&str, &str)> {
        self.files.iter().filter_map(|(p, c)| {
            p.strip_prefix("rootfs/overlay/").map(|rel| (rel, c.as_str()))
        })
    }

    /// All tools, sorted by id.
    pub fn tools(&self) -> impl Iterator<Item = &ToolRecipe> {
        self.tools.values()
    }

    /// One tool.
    pub fn tool(&self, id: &str) -> Option<&ToolRecipe> {
        self.tools.get(id)
    }

    /// All templates, sorted by id.
    pub fn templates(&self) -> impl Iterator<Item = &TemplateRecipe> {
        self.templates.values()
    }

    /// One template.
    pub fn template(&self, id: &str) -> Result<&TemplateRecipe, RecipeError> {
        self.templates
            .get(id)
            .ok_or_else(|| RecipeError::UnknownTemplate(id.into()))
    }

    /// Cache key of the kernel for a given linux-source package version.
    pub fn kernel_key(&self, linux_source_version: &str) -> Result<String, RecipeError> {
        Ok(hash(&[KERNEL_FORMAT, linux_source_version, self.kernel_fragment()?]))
    }

    /// Cache key of the base rootfs tree.
    pub fn rootfs_key(&self) -> Result<String, RecipeError> {
        let mut parts: Vec<&str> = vec![ROOTFS_FORMAT];
        for (p, c) in self.files.iter().filter(|(p, _)| p.starts_with("rootfs/")) {
            parts.push(p);
            parts.push(c);
        }
        Ok(hash(&parts))
    }

    /// Cache key of a template's tree (base rootfs plus the template layer).
    pub fn template_key(&self, id: &str) -> Result<String, RecipeError> {
        let t = self.template(id)?;
        let rootfs = self.rootfs_key()?;
        // Only what changes the bits on disk goes into the key: floors and
        // descriptions do not.
        let layer = serde_json::json!({"packages": t.packages, "build_script": t.build_script}).to_string();
        Ok(hash(&[TEMPLATE_FORMAT, &rootfs, &layer]))
    }

    /// Cache key of a bootable image: a template tree plus the guest agent.
    pub fn image_key(&self, id: &str, agent_sha256: &str) -> Result<String, RecipeError> {
        let tk = self.template_key(id)?;
        Ok(hash(&[IMAGE_FORMAT, &tk, agent_sha256]))
    }
}

/// Short hex SHA-256 over length-prefixed parts.
pub fn hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize()[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_recipes_parse_and_ship_the_required_templates() {
        let set = RecipeSet::embedded().unwrap();
        for id in ["base", "dev", "python"] {
            set.template(id).unwrap();
        }
        let base = set.template("base").unwrap();
        assert_eq!((base.min_ram_mb, base.min_vcpu, base.min_disk_mb), (512, 1, 3072));
        assert!(set.kernel_fragment().unwrap().contains("CONFIG_VIRTIO_BLK=y"));
        assert!(set.rootfs().unwrap().packages.iter().any(|p| p == "openssh-server"));
        assert!(set.rootfs_overlay().any(|(p, _)| p == "etc/systemd/system/rigbox-agent.service"));
        assert!(set.tool("filebrowser").is_some() && set.tool("jupyter").is_some());
    }

    #[test]
    fn keys_are_stable_and_change_with_the_recipe() {
        let set = RecipeSet::embedded().unwrap();
        assert_eq!(set.kernel_key("1").unwrap(), set.kernel_key("1").unwrap());
        assert_ne!(set.kernel_key("1").unwrap(), set.kernel_key("2").unwrap());
        assert_ne!(set.template_key("base").unwrap(), set.template_key("dev").unwrap());
        assert_ne!(set.image_key("base", "a").unwrap(), set.image_key("base", "b").unwrap());
        let mut changed = set.clone();
        changed
            .files
            .insert("rootfs/overlay/etc/extra".into(), "x".into());
        assert_ne!(set.rootfs_key().unwrap(), changed.rootfs_key().unwrap());
        assert_ne!(set.template_key("dev").unwrap(), changed.template_key("dev").unwrap());
    }

    #[test]
    fn bad_template_ids_are_refused() {
        let mut set = RecipeSet::embedded().unwrap();
        let err = set
            .add_template("templates/x.toml", "id='Bad Id'\nname='x'\ndescription=''\nmin_ram_mb=1\nmin_vcpu=1\nmin_disk_mb=1\n")
            .unwrap_err();
        assert!(err.to_string().contains("lowercase"));
    }
}
