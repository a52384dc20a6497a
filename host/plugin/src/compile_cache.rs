//! Compiled components on disk, so a broker restart or a reload of an
//! unchanged file costs a file map instead of seconds of Cranelift (Python
//! and JS guests take ~4 s to compile).
//!
//! Key: sha256 of the `.wasm` bytes + a hash of everything that makes
//! compiled code compatible (`Engine::precompile_compatibility_hash`: target,
//! Cranelift flags, tunables, wasm features and the wasmtime version).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::error::{PluginError, error_text};

/// Cached artifacts kept; the oldest go first. Each is a few MB at most for
/// Rust guests and ~20-40 MB for Python/JS ones.
pub const CACHE_ENTRIES_MAX: usize = 64;
const CACHE_SUFFIX: &str = ".cwasm";

/// Where an artifact came from (reported in logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Compiled,
}

pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

impl CompileCache {
    pub fn open(dir: &Path, engine: &Engine) -> Result<CompileCache, PluginError> {
        std::fs::create_dir_all(dir).map_err(|source| PluginError::Io { path: dir.to_owned(), source })?;
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(CompileCache { dir: dir.to_owned(), engine_key: format!("{:016x}", hasher.finish()) })
    }

    fn artifact_path(&self, wasm_sha256: &str) -> PathBuf {
        self.dir.join(format!("{wasm_sha256}-{}{CACHE_SUFFIX}", self.engine_key))
    }

    /// The compiled component for `wasm` (whose sha256 is `wasm_sha256`),
    /// from the cache or compiled now and stored.
    pub fn component(
        &self,
        engine: &Engine,
        plugin: &str,
        wasm_path: &Path,
        wasm: &[u8],
        wasm_sha256: &str,
    ) -> Result<(Component, CacheOutcome), PluginError> {
        debug_assert_eq!(wasm_sha256.len(), 64);
        let artifact = self.artifact_path(wasm_sha256);
        if artifact.exists() {
            // SAFETY: the cache directory belongs to the broker and only ever
            // receives files this function wrote from `precompile_component`
            // (written to a temporary name, then renamed). `deserialize_file`
            // still checks the header and engine compatibility.
            match unsafe { Component::deserialize_file(engine, &artifact) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(
                        plugin,
                        artifact = %artifact.display(),
                        "discarding unusable compiled artifact: {e}"
                    );
                    let _ = std::fs::remove_file(&artifact);
                }
            }
        }

        let compiled = engine.precompile_component(wasm).map_err(|e| PluginError::Compile {
            plugin: plugin.to_owned(),
            path: wasm_path.to_owned(),
            message: error_text(&e),
        })?;

        match self.store(&artifact, &compiled) {
            Ok(()) => {
                self.evict();
                // SAFETY: as above; the file holds the bytes just produced.
                let component = unsafe { Component::deserialize_file(engine, &artifact) }.map_err(|e| {
                    PluginError::Compile { plugin: plugin.to_owned(), path: artifact.clone(), message: error_text(&e) }
                })?;
                Ok((component, CacheOutcome::Compiled))
            }
            Err(e) => {
                // The cache is an optimisation: serve from memory.
                tracing::warn!(plugin, artifact = %artifact.display(), "cannot write compile cache: {e}");
                // SAFETY: the bytes come from `precompile_component` of this engine.
                let component =
                    unsafe { Component::deserialize(engine, &compiled) }.map_err(|e| PluginError::Compile {
                        plugin: plugin.to_owned(),
                        path: wasm_path.to_owned(),
                        message: error_text(&e),
                    })?;
                Ok((component, CacheOutcome::Compiled))
            }
        }
    }

    fn store(&self, artifact: &Path, bytes: &[u8]) -> std::io::Result<()> {
        // Unique temporary name: two registries may share a cache directory.
        let tmp = artifact.with_extension(format!("tmp.{}.{:?}", std::process::id(), std::thread::current().id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, artifact).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// Keeps at most `CACHE_ENTRIES_MAX` artifacts, removing the oldest.
    fn evict(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut artifacts: Vec<(SystemTime, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(CACHE_SUFFIX))
            .filter_map(|e| {
                let modified = e.metadata().ok()?.modified().ok()?;
                Some((modified, e.path()))
            })
            .collect();
        if artifacts.len() <= CACHE_ENTRIES_MAX {
            return;
        }
        artifacts.sort();
        let excess = artifacts.len() - CACHE_ENTRIES_MAX;
        for (_, path) in artifacts.into_iter().take(excess) {
            let _ = std::fs::remove_file(path);
        }
    }
}
