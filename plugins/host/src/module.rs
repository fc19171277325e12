//! A plugin file, loaded: checked, compiled (or taken from the disk cache), linked and asked
//! to describe itself. One [`Module`] per distinct file content, shared by every processor
//! and every check in the process that uses it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;

use crate::PluginError;
use crate::bindings::{PluginInfo, PluginPre};
use crate::engine;
use crate::sandbox::{Grants, HostState, Instance, Limits};
use crate::world::{self, Outline};

/// A loaded plugin version.
pub struct Module {
    /// The file it was read from.
    pub path: PathBuf,
    /// SHA-256 of its bytes, hex.
    pub hash: String,
    /// Its size in bytes.
    pub size: usize,
    /// Its world version, imports and exports.
    pub outline: Outline,
    /// What it says about itself.
    pub info: PluginInfo,
    /// Its config schema, compiled (none: any config).
    schema: Option<jsonschema::Validator>,
    pre: PluginPre<HostState>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("path", &self.path)
            .field("hash", &self.hash)
            .field("name", &self.info.name)
            .field("version", &self.info.version)
            .finish_non_exhaustive()
    }
}

/// Loaded modules by content hash.
static LOADED: LazyLock<Mutex<HashMap<String, Arc<Module>>>> = LazyLock::new(Default::default);

/// The SHA-256 of `bytes`, hex.
pub fn sha256(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Module {
    /// Load the plugin at `path`. `limits` bound the instance that answers `describe`.
    pub fn load(path: &Path, limits: &Limits) -> Result<Arc<Module>, PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(path, &bytes, limits)
    }

    /// Load a plugin from its bytes (read from `path`).
    pub fn from_bytes(
        path: &Path,
        bytes: &[u8],
        limits: &Limits,
    ) -> Result<Arc<Module>, PluginError> {
        let hash = sha256(bytes);
        if let Some(m) = LOADED.lock().get(&hash) {
            return Ok(m.clone());
        }
        let outline = world::outline(bytes)?;
        let shared = engine::shared()?;
        let component = shared.component(bytes, &hash)?;
        let pre = shared
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::Link(format!("{e:#}")))?;
        let pre = PluginPre::new(pre).map_err(|e| PluginError::Link(format!("{e:#}")))?;
        let mut module = Module {
            path: path.to_owned(),
            hash: hash.clone(),
            size: bytes.len(),
            outline,
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                description: String::new(),
                outputs: Vec::new(),
                config_schema: String::new(),
            },
            schema: None,
            pre,
        };
        let mut instance = Instance::new(&module, limits, &Grants::default(), "describe".into())
            .map_err(PluginError::Describe)?;
        let info = instance.describe().map_err(PluginError::Describe)?;
        check_info(&info)?;
        module.schema = compile_schema(&info.config_schema)?;
        module.info = info;
        let module = Arc::new(module);
        LOADED.lock().insert(hash, module.clone());
        Ok(module)
    }

    /// The pre-linked component, ready to instantiate.
    pub(crate) fn pre(&self) -> &PluginPre<HostState> {
        &self.pre
    }

    /// Check `config` against the plugin's schema: each problem with the path of keys to the
    /// offending value.
    pub fn check_config(&self, config: &serde_json::Value) -> Vec<(Vec<String>, String)> {
        let Some(schema) = &self.schema else {
            return Vec::new();
        };
        let mut errors: Vec<(Vec<String>, String)> = schema
            .iter_errors(config)
            .map(|e| {
                let mut path: Vec<String> = e
                    .instance_path()
                    .as_str()
                    .split('/')
                    .skip(1)
                    .map(|s| s.replace("~1", "/").replace("~0", "~"))
                    .collect();
                // An unknown key: point at it rather than at its mapping.
                if let jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } =
                    e.kind()
                    && let [key] = unexpected.as_slice()
                {
                    path.push(key.clone());
                }
                (path, e.to_string())
            })
            .collect();
        errors.sort();
        errors.dedup();
        errors
    }
}

fn check_info(info: &PluginInfo) -> Result<(), PluginError> {
    let bad = |m: String| Err(PluginError::Info(m));
    if info.outputs.is_empty() {
        return bad("it declares no output port".into());
    }
    for (i, port) in info.outputs.iter().enumerate() {
        if port.is_empty()
            || !port
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return bad(format!(
                "output port `{port}` is not a name (letters, digits, `_` and `-`)"
            ));
        }
        if port == flow_core::processor::FAILURE {
            return bad("it declares `failure`, which every processor already has".into());
        }
        if info.outputs[..i].contains(port) {
            return bad(format!("it declares port `{port}` twice"));
        }
    }
    Ok(())
}

fn compile_schema(text: &str) -> Result<Option<jsonschema::Validator>, PluginError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let schema: serde_json::Value =
        serde_json::from_str(text).map_err(|e| PluginError::Schema(e.to_string()))?;
    jsonschema::validator_for(&schema)
        .map(Some)
        .map_err(|e| PluginError::Schema(e.to_string()))
}
