//! The build steps: kernel, base rootfs tree, template trees, bootable images.
//!
//! Cache layout under the image cache root (`RIGBOX_IMAGE_CACHE`):
//!
//! ```text
//! kernel/<key>/vmlinux        kernel ELF (PVH note; boots on QEMU and Firecracker)
//! kernel/<key>/config         the resolved .config
//! kernel/<key>/recipe.json    linux-source version and fragment hash
//! trees/<key>/                a root filesystem tree (base or template layer)
//! images/<tpl>-<key>.ext4     bootable ext4 image (tree + guest agent)
//! images/<tpl>-<key>.json     its manifest
//! tmp/                        staging; anything here is garbage after a crash
//! .lock                       held (flock) while building
//! ```
//!
//! Every artifact is written under a temporary name and renamed into place, so
//! a reader never sees half an artifact and an interrupted build leaves only
//! `tmp/` garbage, which the next build removes.

use crate::progress::{Progress, Step};
use crate::recipe::{hash, RecipeError, RecipeSet, TemplateRecipe};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const LINUX_SOURCE_PKG: &str = "linux-source-6.1";
const LINUX_SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";

/// Errors of the image pipeline.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A recipe problem.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// A host tool is missing.
    #[error("{tool} is not installed (apt-get install {package})")]
    MissingTool {
        /// The command.
        tool: String,
        /// The Debian package providing it.
        package: String,
    },
    /// A build command failed.
    #[error("{step}: `{command}` failed ({status}); last output:\n{tail}")]
    Command {
        /// Build step.
        step: String,
        /// The command line.
        command: String,
        /// Exit status.
        status: String,
        /// The last lines it printed.
        tail: String,
    },
    /// Filesystem error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The image for this template has not been built.
    #[error("Image for template {template:?} is not built (run `rigboxd image build`)")]
    NotBuilt {
        /// Template id.
        template: String,
    },
    /// Options of the fragment that the resolved kernel config did not keep.
    #[error("Kernel config dropped options of the fragment (missing dependencies?): {}", missing.join(" "))]
    KernelConfig {
        /// The options.
        missing: Vec<String>,
    },
    /// The guest agent binary to put in the image is missing.
    #[error("Guest agent binary not found at {0} (build it with `cargo build -p rigbox-guest-agent`)")]
    AgentMissing(PathBuf),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

/// A bootable guest: kernel plus root filesystem image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GuestImage {
    /// Template id.
    pub template: String,
    /// Kernel ELF.
    pub kernel: PathBuf,
    /// ext4 root filesystem image.
    pub rootfs: PathBuf,
    /// Size of the rootfs image in MiB (the smallest disk a workspace can have).
    pub rootfs_size_mb: u64,
    /// Image cache key.
    pub key: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct KernelManifest {
    linux_source_version: String,
    fragment_hash: String,
}

/// How many artifacts of each kind no current recipe uses stay cached.
const KEEP_OLD: usize = 2;

/// What [`Pipeline::prune`] removed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PruneReport {
    /// Files and directories removed.
    pub removed: usize,
    /// Disk space freed (allocated blocks, so sparse images count as stored).
    pub freed_bytes: u64,
}

impl PruneReport {
    fn add(&mut self, p: &Path) {
        let bytes = allocated(p);
        let gone = if p.is_dir() { fs::remove_dir_all(p) } else { fs::remove_file(p) };
        if gone.is_ok() {
            self.removed += 1;
            self.freed_bytes += bytes;
        }
    }
}

/// Allocated bytes under `p` (files' blocks, not their apparent sizes).
fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = fs::symlink_metadata(p) else { return 0 };
    if m.is_dir() {
        fs::read_dir(p).into_iter().flatten().flatten().map(|e| allocated(&e.path())).sum::<u64>() + m.blocks() * 512
    } else {
        m.blocks() * 512
    }
}

/// The image cache directory.
#[derive(Debug, Clone)]
pub struct ImageCache {
    root: PathBuf,
}

impl ImageCache {
    /// A cache rooted at `root` (created on demand).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ImageCache { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn kernel_dir(&self, key: &str) -> PathBuf {
        self.root.join("kernel").join(key)
    }

    fn tree_dir(&self, key: &str) -> PathBuf {
        self.root.join("trees").join(key)
    }

    fn image_path(&self, template: &str, key: &str) -> PathBuf {
        self.root.join("images").join(format!("{template}-{key}.ext4"))
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn lock(&self) -> Result<Flock<fs::File>, ImageError> {
        fs::create_dir_all(&self.root).map_err(io(format!("creating {}", self.root.display())))?;
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(".lock"))
            .map_err(io("opening the cache lock"))?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| ImageError::Io {
            context: "locking the image cache".into(),
            source: e.into(),
        })
    }
}

/// Builds and finds guest images.
#[derive(Debug, Clone)]
pub struct Pipeline {
    agent_sha: std::sync::Arc<std::sync::Mutex<Option<(std::time::SystemTime, u64, String)>>>,
    cache: ImageCache,
    recipes: RecipeSet,
    agent: PathBuf,
    progress: Progress,
    mirror: String,
    jobs: usize,
}

impl Pipeline {
    /// A pipeline over `cache`, putting the guest agent at `agent` into images.
    pub fn new(cache: ImageCache, recipes: RecipeSet, agent: PathBuf) -> Self {
        Pipeline {
            agent_sha: Default::default(),
            cache,
            recipes,
            agent,
            progress: Progress::stderr(),
            mirror: debian_mirror(),
            jobs: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
        }
    }

    /// Replaces the progress reporter.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// Overrides the Debian mirror.
    pub fn with_mirror(mut self, mirror: impl Into<String>) -> Self {
        self.mirror = mirror.into();
        self
    }

    /// The recipes.
    pub fn recipes(&self) -> &RecipeSet {
        &self.recipes
    }

    /// The cache.
    pub fn cache(&self) -> &ImageCache {
        &self.cache
    }

    /// Hash of the guest agent binary, cached while its size and mtime stay the same.
    fn agent_sha(&self) -> Result<String, ImageError> {
        let meta = fs::metadata(&self.agent).map_err(|_| ImageError::AgentMissing(self.agent.clone()))?;
        let stamp = (meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len());
        if let Ok(g) = self.agent_sha.lock() {
            if let Some((t, l, sha)) = g.as_ref() {
                if (*t, *l) == stamp {
                    return Ok(sha.clone());
                }
            }
        }
        let sha = self.hash_agent()?;
        if let Ok(mut g) = self.agent_sha.lock() {
            *g = Some((stamp.0, stamp.1, sha.clone()));
        }
        Ok(sha)
    }

    fn hash_agent(&self) -> Result<String, ImageError> {
        let mut f = fs::File::open(&self.agent).map_err(|_| ImageError::AgentMissing(self.agent.clone()))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).map_err(io("reading the guest agent"))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(hex::encode(&h.finalize()[..12]))
    }

    /// Finds the kernel without building it.
    pub fn resolve_kernel(&self) -> Result<PathBuf, ImageError> {
        if let Some(v) = linux_source_version() {
            let p = self.cache.kernel_dir(&self.recipes.kernel_key(&v)?).join("vmlinux");
            if p.exists() {
                return Ok(p);
            }
        }
        // No linux-source package here (a node that only runs VMs): take the
        // newest kernel built from the same fragment.
        let frag = hash(&[self.recipes.kernel_fragment()?]);
        let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
        if let Ok(rd) = fs::read_dir(self.cache.root.join("kernel")) {
            for e in rd.flatten() {
                let m: Option<KernelManifest> = fs::read(e.path().join("recipe.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                let vm = e.path().join("vmlinux");
                if let (Some(m), Ok(meta)) = (m, fs::metadata(&vm)) {
                    let t = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                    if m.fragment_hash == frag && best.as_ref().is_none_or(|(bt, _)| t > *bt) {
                        best = Some((t, vm));
                    }
                }
            }
        }
        best.map(|(_, p)| p).ok_or_else(|| ImageError::NotBuilt {
            template: "kernel".into(),
        })
    }

    /// Finds the image of `template` without building anything.
    pub fn resolve(&self, template: &str) -> Result<GuestImage, ImageError> {
        self.recipes.template(template)?;
        let kernel = self.resolve_kernel().map_err(|_| ImageError::NotBuilt {
            template: template.into(),
        })?;
        let key = self.recipes.image_key(template, &self.agent_sha()?)?;
        let rootfs = self.cache.image_path(template, &key);
        let meta = fs::metadata(&rootfs).map_err(|_| ImageError::NotBuilt {
            template: template.into(),
        })?;
        Ok(GuestImage {
            template: template.into(),
            kernel,
            rootfs,
            rootfs_size_mb: meta.len().div_ceil(1 << 20),
            key,
        })
    }

    /// Builds whatever is missing for `templates` (kernel, trees, images).
    pub fn build(&self, templates: &[&str]) -> Result<Vec<GuestImage>, ImageError> {
        for t in templates {
            self.recipes.template(t)?;
        }
        preflight(templates.iter().any(|t| self.needs_layer(t)))?;
        let agent_sha = self.agent_sha()?;
        let _lock = self.cache.lock()?;
        let _ = fs::remove_dir_all(self.cache.tmp());
        fs::create_dir_all(self.cache.tmp()).map_err(io("creating the cache tmp dir"))?;
        let kernel = self.build_kernel()?;
        let mut out = Vec::new();
        for t in templates {
            let key = self.recipes.image_key(t, &agent_sha)?;
            let path = self.cache.image_path(t, &key);
            if !path.exists() {
                let tree = self.build_tree(t)?;
                self.build_image(t, &tree, &path)?;
            } else {
                self.progress.step(&format!("image {t}")).done("cached");
            }
            let len = fs::metadata(&path).map_err(io("reading the image"))?.len();
            out.push(GuestImage {
                template: (*t).into(),
                kernel: kernel.clone(),
                rootfs: path,
                rootfs_size_mb: len.div_ceil(1 << 20),
                key,
            });
        }
        let _ = fs::remove_dir_all(self.cache.tmp());
        // Old recipes' artifacts pile up (every agent build is a new image
        // key): keep a few for switching back, drop the rest.
        match self.prune_locked(&agent_sha, KEEP_OLD) {
            Ok(r) if r.removed > 0 => self.progress.step("cache").done(&format!("pruned {} old artifacts ({} MiB)", r.removed, r.freed_bytes >> 20)),
            Ok(_) => {}
            Err(e) => self.progress.step("cache").done(&format!("pruning failed: {e}")),
        }
        Ok(out)
    }

    /// Removes cached artifacts that the current recipes (and guest agent)
    /// do not use, keeping the `keep` newest others of each kind (per
    /// template for images), and leftovers of interrupted builds.
    pub fn prune(&self, keep: usize) -> Result<PruneReport, ImageError> {
        let agent_sha = self.agent_sha()?;
        let _lock = self.cache.lock()?;
        let _ = fs::remove_dir_all(self.cache.tmp());
        self.prune_locked(&agent_sha, keep)
    }

    fn prune_locked(&self, agent_sha: &str, keep: usize) -> Result<PruneReport, ImageError> {
        let mut current: std::collections::HashSet<String> = std::collections::HashSet::new();
        current.insert(self.recipes.rootfs_key()?);
        if let Some(v) = linux_source_version() {
            current.insert(self.recipes.kernel_key(&v)?);
        } else if let Ok(k) = self.resolve_kernel() {
            // No linux-source here: the kernel in use is the newest matching one.
            if let Some(name) = k.parent().and_then(Path::file_name) {
                current.insert(name.to_string_lossy().into_owned());
            }
        }
        for t in self.recipes.templates() {
            current.insert(self.recipes.template_key(&t.id)?);
            current.insert(format!("{}-{}", t.id, self.recipes.image_key(&t.id, agent_sha)?));
        }
        let mut report = PruneReport::default();
        // (group, mtime, path, files to remove with it)
        let mut old: std::collections::BTreeMap<String, Vec<(std::time::SystemTime, Vec<PathBuf>)>> = Default::default();
        let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
        for kind in ["kernel", "trees"] {
            for e in fs::read_dir(self.cache.root.join(kind)).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !current.contains(&name) {
                    old.entry(kind.to_string()).or_default().push((mtime(&e.path()), vec![e.path()]));
                }
            }
        }
        for e in fs::read_dir(self.cache.root.join("images")).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // We hold the lock: no build is writing it.
                report.add(&e.path());
                continue;
            }
            let Some(stem) = name.strip_suffix(".ext4") else { continue };
            if current.contains(stem) {
                continue;
            }
            let template = stem.rsplit_once('-').map(|(t, _)| t).unwrap_or(stem);
            let files = vec![e.path(), e.path().with_extension("json")];
            old.entry(format!("image {template}")).or_default().push((mtime(&e.path()), files));
        }
        for (_, mut entries) in old {
            entries.sort_by_key(|e| std::cmp::Reverse(e.0));
            for (_, files) in entries.into_iter().skip(keep) {
                for f in files {
                    report.add(&f);
                }
            }
        }
        Ok(report)
    }

    fn needs_layer(&self, t: &str) -> bool {
        self.recipes
            .template(t)
            .map(|t| !t.packages.is_empty() || t.build_script.is_some())
            .unwrap_or(false)
    }

    /// Builds the kernel if it is not cached; returns the vmlinux path.
    pub fn build_kernel(&self) -> Result<PathBuf, ImageError> {
        let version = linux_source_version().ok_or_else(|| ImageError::MissingTool {
            tool: LINUX_SOURCE_TARBALL.into(),
            package: LINUX_SOURCE_PKG.into(),
        })?;
        let key = self.recipes.kernel_key(&version)?;
        let dir = self.cache.kernel_dir(&key);
        let vmlinux = dir.join("vmlinux");
        if vmlinux.exists() {
            self.progress.step("kernel").done("cached");
            return Ok(vmlinux);
        }
        let step = self.progress.step("kernel");
        step.note(&format!("building linux {version} with the rigbox fragment (about 8 min on 2 cores)"));
        let work = self.cache.tmp().join(format!("kernel-{key}"));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).map_err(io("creating the kernel work dir"))?;
        step.update("extracting linux-source");
        run(&step, Command::new("tar").args(["-xf", LINUX_SOURCE_TARBALL, "-C"]).arg(&work), |_| {})?;
        let src = work.join("linux-source-6.1");
        let build = work.join("build");
        let frag_path = work.join("rigbox.fragment");
        fs::write(&frag_path, self.recipes.kernel_fragment()?).map_err(io("writing the fragment"))?;
        step.update("configuring");
        run(&step, Command::new("make").arg("-C").arg(&src).arg(format!("O={}", build.display())).arg("tinyconfig"), |_| {})?;
        run(
            &step,
            Command::new(src.join("scripts/kconfig/merge_config.sh"))
                .current_dir(&src)
                .args(["-m", "-O"])
                .arg(&build)
                .arg(build.join(".config"))
                .arg(&frag_path),
            |_| {},
        )?;
        run(&step, Command::new("make").arg("-C").arg(&src).arg(format!("O={}", build.display())).arg("olddefconfig"), |_| {})?;
        let config = fs::read_to_string(build.join(".config")).map_err(io("reading .config"))?;
        let missing = missing_options(self.recipes.kernel_fragment()?, &config);
        if !missing.is_empty() {
            // A dropped option means a dependency is missing from the
            // fragment: fail now rather than boot a kernel without a disk.
            let _ = fs::remove_dir_all(&work);
            return Err(ImageError::KernelConfig { missing });
        }
        let mut objects = 0usize;
        run(
            &step,
            Command::new("make")
                .arg("-C")
                .arg(&src)
                .arg(format!("O={}", build.display()))
                .arg(format!("-j{}", self.jobs))
                .arg("vmlinux"),
            |line| {
                if line.trim_start().starts_with("CC") || line.trim_start().starts_with("AS") {
                    objects += 1;
                    step.update(&format!("{objects} objects compiled, now {}", line.trim()));
                }
            },
        )?;
        let staging = self.cache.root.join("kernel").join(format!(".{key}.tmp"));
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(&staging).map_err(io("creating the kernel dir"))?;
        fs::copy(build.join("vmlinux"), staging.join("vmlinux")).map_err(io("copying vmlinux"))?;
        fs::write(staging.join("config"), &config).map_err(io("saving .config"))?;
        let manifest = KernelManifest {
            linux_source_version: version,
            fragment_hash: hash(&[self.recipes.kernel_fragment()?]),
        };
        fs::write(staging.join("recipe.json"), serde_json::to_vec_pretty(&manifest).unwrap_or_default())
            .map_err(io("writing the kernel manifest"))?;
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&staging, &dir).map_err(io("installing the kernel"))?;
        let _ = fs::remove_dir_all(&work);
        step.done(&format!("built ({objects} objects)"));
        Ok(vmlinux)
    }

    fn build_base_tree(&self) -> Result<PathBuf, ImageError> {
        let key = self.recipes.rootfs_key()?;
        let dir = self.cache.tree_dir(&key);
        if dir.join(".complete").exists() {
            self.progress.step("rootfs").done("cached");
            return Ok(dir);
        }
        let recipe = self.recipes.rootfs()?;
        let step = self.progress.step("rootfs");
        step.note(&format!("debootstrap {} ({} packages) from {}", recipe.suite, recipe.packages.len(), self.mirror));
        let tmp = self.cache.tmp().join(format!("tree-{key}"));
        let _ = fs::remove_dir_all(&tmp);
        let mut n = 0usize;
        run(
            &step,
            Command::new("debootstrap")
                .arg(format!("--variant={}", recipe.variant))
                .arg(format!("--include={}", recipe.packages.join(",")))
                .arg(&recipe.suite)
                .arg(&tmp)
                .arg(&self.mirror),
            |line| {
                n += 1;
                step.update(line.trim_start_matches("I: "));
            },
        )?;
        for (rel, content) in self.recipes.rootfs_overlay() {
            let p = tmp.join(rel);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
            }
            fs::write(&p, content).map_err(io(format!("writing {}", p.display())))?;
        }
        let script = tmp.join("tmp/rigbox-configure.sh");
        fs::write(&script, self.recipes.rootfs_configure_script()?).map_err(io("writing configure.sh"))?;
        step.update("configuring the tree");
        run(&step, Command::new("chroot").arg(&tmp).args(["/bin/sh", "/tmp/rigbox-configure.sh"]), |l| step.update(l))?;
        let _ = fs::remove_file(&script);
        self.finish_tree(&tmp, &dir)?;
        step.done("built");
        Ok(dir)
    }

    fn finish_tree(&self, tmp: &Path, dir: &Path) -> Result<(), ImageError> {
        fs::write(tmp.join(".complete"), b"").map_err(io("marking the tree complete"))?;
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent).map_err(io("creating trees/"))?;
        }
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(io("removing a stale tree"))?;
        }
        fs::rename(tmp, dir).map_err(io("installing the tree"))
    }

    fn build_tree(&self, template: &str) -> Result<PathBuf, ImageError> {
        let base = self.build_base_tree()?;
        let t = self.recipes.template(template)?.clone();
        if t.packages.is_empty() && t.build_script.is_none() {
            return Ok(base);
        }
        let key = self.recipes.template_key(template)?;
        let dir = self.cache.tree_dir(&key);
        if dir.join(".complete").exists() {
            self.progress.step(&format!("template {template}")).done("cached");
            return Ok(dir);
        }
        let step = self.progress.step(&format!("template {template}"));
        let tmp = self.cache.tmp().join(format!("tree-{key}"));
        let _ = fs::remove_dir_all(&tmp);
        step.update("copying the base tree");
        run(&step, Command::new("cp").args(["-a", "--reflink=auto"]).arg(&base).arg(&tmp), |_| {})?;
        let _ = fs::remove_file(tmp.join(".complete"));
        self.layer(&step, &tmp, &t)?;
        self.finish_tree(&tmp, &dir)?;
        step.done(&format!("built ({} packages)", t.packages.len()));
        Ok(dir)
    }

    fn layer(&self, step: &Step, tree: &Path, t: &TemplateRecipe) -> Result<(), ImageError> {
        // apt inside the tree needs /proc and /dev; they are mounted in a
        // private mount namespace that disappears with the command, so a
        // failed build cannot leave mounts behind.
        fs::write(tree.join("usr/sbin/policy-rc.d"), "#!/bin/sh\nexit 101\n").map_err(io("policy-rc.d"))?;
        set_mode(&tree.join("usr/sbin/policy-rc.d"), 0o755)?;
        let resolv = fs::read("/etc/resolv.conf").unwrap_or_default();
        fs::write(tree.join("etc/resolv.conf"), resolv).map_err(io("resolv.conf"))?;
        let mut script = String::from("set -eu\nexport DEBIAN_FRONTEND=noninteractive LC_ALL=C\n");
        if !t.packages.is_empty() {
            script.push_str("apt-get update -q\n");
            script.push_str(&format!(
                "apt-get install -y -q --no-install-recommends {}\n",
                t.packages.join(" ")
            ));
        }
        if let Some(s) = &t.build_script {
            script.push_str(s);
            script.push('\n');
        }
        script.push_str("apt-get clean\nrm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /tmp/* /var/tmp/*\n");
        fs::write(tree.join("rigbox-layer.sh"), script).map_err(io("writing the layer script"))?;
        let outer = format!(
            "set -e; T='{}'; mount -t proc proc \"$T/proc\"; mount --rbind /dev \"$T/dev\"; chroot \"$T\" /bin/sh /rigbox-layer.sh",
            tree.display()
        );
        let r = run(
            step,
            Command::new("unshare").args(["--mount", "--propagation", "private", "--fork", "sh", "-c", &outer]),
            |l| step.update(l),
        );
        let _ = fs::remove_file(tree.join("rigbox-layer.sh"));
        let _ = fs::remove_file(tree.join("usr/sbin/policy-rc.d"));
        fs::write(tree.join("etc/resolv.conf"), "nameserver 169.254.0.1\n").map_err(io("resolv.conf"))?;
        r
    }

    fn build_image(&self, template: &str, tree: &Path, out: &Path) -> Result<(), ImageError> {
        let step = self.progress.step(&format!("image {template}"));
        let stage = self.cache.tmp().join(format!("image-{template}"));
        let _ = fs::remove_dir_all(&stage);
        step.update("staging the tree");
        run(&step, Command::new("cp").args(["-a", "--reflink=auto"]).arg(tree).arg(&stage), |_| {})?;
        let _ = fs::remove_file(stage.join(".complete"));
        let bin = stage.join("usr/local/bin/rigbox-agent");
        fs::copy(&self.agent, &bin).map_err(io("installing the guest agent"))?;
        set_mode(&bin, 0o755)?;
        let info = serde_json::json!({"template": template, "image_key": out.file_stem().map(|s| s.to_string_lossy().to_string())});
        fs::write(stage.join("etc/rigbox/image.json"), info.to_string()).map_err(io("image.json"))?;
        let bytes = dir_size(&stage);
        let size_mb = ((bytes as f64 * 1.25) as u64 / (1 << 20) + 256).max(1024).div_ceil(64) * 64;
        fs::create_dir_all(out.parent().unwrap_or(Path::new("."))).map_err(io("creating images/"))?;
        let tmp_out = out.with_extension("ext4.tmp");
        step.update(&format!("mkfs.ext4 -d ({size_mb} MiB)"));
        run(
            &step,
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", "rbxroot", "-m", "1", "-d"])
                .arg(&stage)
                .arg(&tmp_out)
                .arg(format!("{size_mb}M")),
            |_| {},
        )?;
        fs::rename(&tmp_out, out).map_err(io("installing the image"))?;
        let _ = fs::remove_dir_all(&stage);
        step.done(&format!("{} ({size_mb} MiB)", out.display()));
        Ok(())
    }
}

fn set_mode(p: &Path, mode: u32) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(io(format!("chmod {}", p.display())))
}

fn dir_size(p: &Path) -> u64 {
    let out = Command::new("du").args(["-sb"]).arg(p).output();
    out.ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().next().and_then(|s| s.parse().ok()))
        .unwrap_or(1 << 30)
}

/// Options set to `y` in the fragment that did not end up in the config.
fn missing_options(fragment: &str, config: &str) -> Vec<String> {
    fragment
        .lines()
        .filter_map(|l| l.trim().strip_suffix("=y"))
        .filter(|opt| !config.lines().any(|c| c.trim() == format!("{opt}=y")))
        .map(str::to_string)
        .collect()
}

/// The installed linux-source-6.1 package version, if any.
pub fn linux_source_version() -> Option<String> {
    if !Path::new(LINUX_SOURCE_TARBALL).exists() {
        return None;
    }
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", LINUX_SOURCE_PKG])
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!v.is_empty()).then_some(v)
}

/// The Debian mirror the host itself uses (or deb.debian.org).
pub fn debian_mirror() -> String {
    if let Ok(m) = std::env::var("RIGBOX_DEBIAN_MIRROR") {
        return m;
    }
    fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .ok()
        .and_then(|s| {
            s.lines()
                .filter_map(|l| l.strip_prefix("URIs:"))
                .map(|u| u.trim().to_string())
                .find(|u| !u.contains("security"))
        })
        .unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

/// Checks the host tools the pipeline needs.
pub fn preflight(layers: bool) -> Result<(), ImageError> {
    let mut tools = vec![
        ("debootstrap", "debootstrap"),
        ("mkfs.ext4", "e2fsprogs"),
        ("make", "make"),
        ("gcc", "gcc"),
        ("flex", "flex"),
        ("bison", "bison"),
        ("bc", "bc"),
        ("tar", "tar"),
        ("xz", "xz-utils"),
        ("chroot", "coreutils"),
    ];
    if layers {
        tools.push(("unshare", "util-linux"));
    }
    for (tool, package) in tools {
        if which(tool).is_none() {
            return Err(ImageError::MissingTool {
                tool: tool.into(),
                package: package.into(),
            });
        }
    }
    if !Path::new("/usr/include/libelf.h").exists() {
        return Err(ImageError::MissingTool {
            tool: "libelf.h".into(),
            package: "libelf-dev".into(),
        });
    }
    Ok(())
}

/// Finds `tool` on PATH (plus the sbin directories).
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file());
    found
}

/// Runs `cmd`, feeding each output line to `on_line`, keeping the tail for errors.
fn run(step: &Step, cmd: &mut Command, mut on_line: impl FnMut(&str)) -> Result<(), ImageError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io(format!("starting {shown}")))?;
    let stderr = child.stderr.take();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let tx2 = tx.clone();
    let t_err = std::thread::spawn(move || {
        if let Some(e) = stderr {
            for l in BufReader::new(e).lines().map_while(Result::ok) {
                let _ = tx2.send(l);
            }
        }
    });
    let stdout = child.stdout.take();
    let t_out = std::thread::spawn(move || {
        if let Some(o) = stdout {
            for l in BufReader::new(o).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        }
    });
    let mut tail: VecDeque<String> = VecDeque::new();
    for line in rx {
        on_line(&line);
        tail.push_back(line);
        if tail.len() > 40 {
            tail.pop_front();
        }
    }
    let _ = t_err.join();
    let _ = t_out.join();
    let status = child.wait().map_err(io(format!("waiting for {shown}")))?;
    if !status.success() {
        return Err(ImageError::Command {
            step: step_name(step),
            command: shown,
            status: status.to_string(),
            tail: tail.into_iter().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(())
}

fn step_name(step: &Step) -> String {
    format!("{step:?}").split('"').nth(1).unwrap_or("build").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_options_are_reported() {
        let frag = "CONFIG_A=y\nCONFIG_B=y\n# c\nCONFIG_C=n\n";
        let cfg = "CONFIG_A=y\n# CONFIG_B is not set\n";
        assert_eq!(missing_options(frag, cfg), vec!["CONFIG_B".to_string()]);
    }

    #[test]
    fn prune_keeps_current_and_newest_old_artifacts() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        fs::write(&agent, b"agent").unwrap();
        let cache = ImageCache::new(dir.path().join("cache"));
        let p = Pipeline::new(cache.clone(), RecipeSet::embedded().unwrap(), agent).with_progress(Progress::quiet());
        let sha = p.agent_sha().unwrap();
        let images = cache.root().join("images");
        fs::create_dir_all(&images).unwrap();
        let current = cache.image_path("base", &p.recipes.image_key("base", &sha).unwrap());
        fs::write(&current, b"current").unwrap();
        let t0 = std::time::SystemTime::now();
        let mut olds = Vec::new();
        for i in 0..4u64 {
            let f = images.join(format!("base-old{i}.ext4"));
            fs::write(&f, vec![1u8; 8192]).unwrap();
            fs::write(f.with_extension("json"), b"{}").unwrap();
            // old0 is the oldest.
            let t = t0 - std::time::Duration::from_secs(100 - i * 10);
            fs::File::options().write(true).open(&f).unwrap().set_modified(t).unwrap();
            olds.push(f);
        }
        fs::write(images.join("dev-x.ext4.tmp"), b"half").unwrap();
        let stale_tree = cache.tree_dir("oldtree");
        fs::create_dir_all(&stale_tree).unwrap();
        let current_tree = cache.tree_dir(&p.recipes.rootfs_key().unwrap());
        fs::create_dir_all(&current_tree).unwrap();

        let r = p.prune(1).unwrap();
        assert!(current.exists(), "the current image stays");
        assert!(olds[3].exists(), "the newest old image stays");
        for f in &olds[..3] {
            assert!(!f.exists() && !f.with_extension("json").exists(), "{} pruned", f.display());
        }
        assert!(!images.join("dev-x.ext4.tmp").exists(), "leftovers go");
        assert!(current_tree.exists() && stale_tree.exists(), "one old tree is kept");
        assert_eq!(r.removed, 3 * 2 + 1);
        assert!(r.freed_bytes >= 3 * 8192);
        p.prune(0).unwrap();
        assert!(current.exists() && current_tree.exists());
        assert!(!olds[3].exists() && !stale_tree.exists());
    }

    #[test]
    fn resolve_reports_not_built_on_an_empty_cache() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        fs::write(&agent, b"agent").unwrap();
        let p = Pipeline::new(ImageCache::new(dir.path().join("cache")), RecipeSet::embedded().unwrap(), agent)
            .with_progress(Progress::quiet());
        match p.resolve("base") {
            Err(ImageError::NotBuilt { template }) => assert_eq!(template, "base"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(p.resolve("nope"), Err(ImageError::Recipe(RecipeError::UnknownTemplate(_)))));
    }

    #[test]
    fn missing_agent_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = Pipeline::new(ImageCache::new(dir.path()), RecipeSet::embedded().unwrap(), dir.path().join("none"))
            .with_progress(Progress::quiet());
        assert!(matches!(p.agent_sha(), Err(ImageError::AgentMissing(_))));
    }
}
