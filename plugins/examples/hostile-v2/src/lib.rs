//! A well-behaved filter built against a future version of the world, `flow:plugin@0.2.0`
//! (the same WIT with another version): a host of 0.1 must refuse it with a clear message.

wit_bindgen::generate!({ path: "wit", world: "flow:plugin/plugin@0.2.0" });

use exports::flow::plugin::guest::{Guest, Input, Outcome, Output, PluginInfo};

struct Future;

impl Guest for Future {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "hostile-v2".into(),
            version: "0.2.0".into(),
            description: "a plugin of the 0.2 world".into(),
            outputs: vec!["out".into()],
            config_schema: String::new(),
        }
    }

    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn process(batch: Vec<Input>) -> Vec<Outcome> {
        batch
            .iter()
            .map(|_| {
                Ok(vec![Output {
                    port: "out".into(),
                    content: None,
                    attributes: Vec::new(),
                    event_time: None,
                }])
            })
            .collect()
    }
}

export!(Future);
