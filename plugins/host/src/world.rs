//! What a component file declares, read without compiling it: whether it is a component at
//! all, which version of the plugin world it exports, and what it imports.

use wasmparser::{Encoding, Parser, Payload};

use crate::PluginError;

/// The version of `flow:plugin` this host speaks.
pub const WORLD_VERSION: &str = "0.1.0";
/// The interface a plugin exports, without its version.
pub const GUEST: &str = "flow:plugin/guest";

/// The outline of a component file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outline {
    /// The version of `flow:plugin/guest` it exports.
    pub world_version: String,
    /// Its top-level imports (`wasi:cli/environment@0.2.6`, `flow:plugin/host@0.1.0`).
    pub imports: Vec<String>,
    /// Its top-level exports.
    pub exports: Vec<String>,
}

/// Read the outline of `bytes` and check that it is a plugin of a version this host runs.
pub fn outline(bytes: &[u8]) -> Result<Outline, PluginError> {
    let mut depth = 0usize;
    let mut component = None;
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| PluginError::NotWasm(e.to_string()))?;
        match payload {
            Payload::Version { encoding, .. } => {
                if depth == 0 {
                    component = Some(encoding == Encoding::Component);
                    if encoding == Encoding::Module {
                        return Err(PluginError::CoreModule);
                    }
                }
                depth += 1;
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(s) if depth == 1 => {
                for i in s {
                    let i = i.map_err(|e| PluginError::NotWasm(e.to_string()))?;
                    imports.push(i.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(s) if depth == 1 => {
                for e in s {
                    let e = e.map_err(|e| PluginError::NotWasm(e.to_string()))?;
                    exports.push(e.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    if component != Some(true) {
        return Err(PluginError::NotWasm("empty file".into()));
    }
    let guest = exports.iter().find_map(|e| {
        e.strip_prefix(GUEST)
            .map(|v| v.strip_prefix('@').unwrap_or(v))
    });
    let Some(version) = guest else {
        return Err(PluginError::NotAPlugin {
            exports: exports.join(", "),
        });
    };
    if !compatible(version, WORLD_VERSION) {
        return Err(PluginError::WorldVersion {
            found: version.to_owned(),
        });
    }
    Ok(Outline {
        world_version: version.to_owned(),
        imports,
        exports,
    })
}

/// Whether a plugin built against `found` runs on a host of `host`: the same major version,
/// and for 0.x the same minor version (semver's rule for pre-1.0 versions). Pre-releases
/// must match exactly.
pub fn compatible(found: &str, host: &str) -> bool {
    if found == host {
        return true;
    }
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let _patch: u64 = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some((major, minor))
    };
    match (parse(found), parse(host)) {
        (Some((0, a)), Some((0, b))) => a == b,
        (Some((a, _)), Some((b, _))) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_compatible_by_semver() {
        assert!(compatible("0.1.0", "0.1.0"));
        assert!(compatible("0.1.4", "0.1.0"));
        assert!(!compatible("0.2.0", "0.1.0"));
        assert!(!compatible("1.1.0", "0.1.0"));
        assert!(compatible("1.3.0", "1.0.0"));
        assert!(!compatible("0.1.0-rc1", "0.1.0"));
        assert!(!compatible("", "0.1.0"));
    }

    #[test]
    fn rejects_what_is_not_a_component() {
        assert!(matches!(outline(b"not wasm"), Err(PluginError::NotWasm(_))));
        // The smallest core module: magic and version 1.
        let core = b"\0asm\x01\0\0\0";
        assert!(matches!(outline(core), Err(PluginError::CoreModule)));
        // The smallest component: magic and the component layer (0x0d 0x00 0x01 0x00).
        let empty = b"\0asm\x0d\0\x01\0";
        assert!(matches!(
            outline(empty),
            Err(PluginError::NotAPlugin { .. })
        ));
    }
}
