//! `rigboxd`: the Rigbox server binary (thin; the work is in `rigbox-server`).

use anyhow::Context;
use clap::{Parser, Subcommand};
use rigbox_image::Progress;
use rigbox_server::Settings;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "rigboxd", version, about = "Rigbox: workspaces in micro-VMs on your own hardware")]
struct Cli {
    /// Settings file (TOML); environment variables RIGBOX_* override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run everything on this machine (control plane, node agent, SSH gateway, edge).
    Up {
        /// Do not build missing guest images.
        #[arg(long)]
        no_build: bool,
    },
    /// Run only the control plane (nodes are registered with `POST /api/v1/admin/nodes`).
    ControlPlane,
    /// Run only the node agent (the data plane) on this host.
    Node,
    /// Guest images.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// Measure the platform and print a report (not a test).
    Bench {
        /// Sections to run (substrate, api, ssh, snapshots, edge, metrics, quickdeploy, ai); all by default.
        #[arg(long = "section")]
        sections: Vec<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print what the host offers and which VMM backend would be used, and why.
    Doctor {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build the kernel, the rootfs and template images (cached by recipe hash).
    Build {
        /// Templates to build (default: the configured default templates).
        #[arg(short, long)]
        template: Vec<String>,
        /// Build every template.
        #[arg(long)]
        all: bool,
    },
    /// List templates and whether their image is built.
    Ls,
    /// Remove cached kernels, trees and images that the current recipes and
    /// guest agent do not use (builds keep the two newest of each kind).
    Prune {
        /// How many unused artifacts of each kind to keep (newest first).
        #[arg(long, default_value_t = 0)]
        keep: usize,
    },
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RIGBOX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.cmd {
        Cmd::Up { no_build } => {
            let p = rigbox_server::up(&settings, !no_build).await?;
            eprintln!("Rigbox is up: API {} (node {} at {})", p.control.url(), p.node.node.id(), p.node.url());
            tokio::signal::ctrl_c().await.context("waiting for ctrl-c")?;
            p.shutdown().await;
        }
        Cmd::ControlPlane => {
            let c = rigbox_server::start_control_plane(&settings, None).await?;
            eprintln!("control plane listening on {}", c.url());
            tokio::signal::ctrl_c().await.context("waiting for ctrl-c")?;
            c.shutdown().await;
        }
        Cmd::Node => {
            let h = rigbox_server::start_node(&settings).await?;
            eprintln!("node agent {} listening on {}", h.node.id(), h.url());
            tokio::signal::ctrl_c().await.context("waiting for ctrl-c")?;
            h.shutdown().await;
        }
        Cmd::Image { cmd: ImageCmd::Build { template, all } } => {
            let p = rigbox_server::pipeline(&settings, Progress::stderr())?;
            let templates: Vec<String> = if all {
                p.recipes().templates().map(|t| t.id.clone()).collect()
            } else if template.is_empty() {
                settings.default_templates.clone()
            } else {
                template
            };
            let built = rigbox_server::build_images(&settings, templates, Progress::stderr()).await?;
            for b in built {
                println!("{}\t{}\t{} MiB\tkernel {}", b.template, b.rootfs.display(), b.rootfs_size_mb, b.kernel.display());
            }
        }
        Cmd::Image { cmd: ImageCmd::Ls } => {
            let p = rigbox_server::pipeline(&settings, Progress::quiet())?;
            for t in p.recipes().templates() {
                match p.resolve(&t.id) {
                    Ok(img) => println!("{}\tbuilt\t{}", t.id, img.rootfs.display()),
                    Err(e) => println!("{}\tmissing\t{e}", t.id),
                }
            }
        }
        Cmd::Image { cmd: ImageCmd::Prune { keep } } => {
            let p = rigbox_server::pipeline(&settings, Progress::quiet())?;
            let r = tokio::task::spawn_blocking(move || p.prune(keep)).await.context("pruning")??;
            println!("removed {} artifacts, freed {} MiB", r.removed, r.freed_bytes >> 20);
        }
        Cmd::Bench { sections, json } => {
            let report = rigbox_bench::run(&settings, &sections).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
        }
        Cmd::Doctor { json } => {
            let (probe, choice) = rigbox_server::probe(&settings);
            if json {
                let v = serde_json::json!({
                    "probe": probe,
                    "choice": choice.as_ref().ok(),
                    "error": choice.as_ref().err().map(|e| e.to_string()),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", probe.report(choice.as_ref()));
                let p = rigbox_server::pipeline(&settings, Progress::quiet())?;
                println!("image cache:             {}", settings.image_cache.display());
                match p.resolve_kernel() {
                    Ok(k) => println!("guest kernel:            {}", k.display()),
                    Err(_) => println!("guest kernel:            not built (rigboxd image build)"),
                }
                for t in p.recipes().templates() {
                    let state = if p.resolve(&t.id).is_ok() { "built" } else { "not built" };
                    println!("template {:<14} {state}", format!("{}:", t.id));
                }
            }
        }
    }
    Ok(())
}
