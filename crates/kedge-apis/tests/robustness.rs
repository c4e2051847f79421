//! No input, however malformed, makes loading panic; and whatever loads
//! writes back to YAML that loads to the same value.

use std::net::Ipv4Addr;

use kedge_apis::config::cloudcore::CloudCoreConfig;
use kedge_apis::config::edgecore::EdgeCoreConfig;
use kedge_apis::config::{ConfigError, GoDuration, HostInfo};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

fn host() -> HostInfo {
    HostInfo::new("node-a", Ipv4Addr::new(10, 0, 0, 2))
}

/// Loads `text` as both file types. Whatever loads must round-trip.
fn load_both(text: &str) {
    if let Ok(c) = CloudCoreConfig::from_yaml_str_with_host(text, &host()) {
        let yaml = c
            .to_yaml()
            .expect("an accepted cloudcore config serialises");
        let again = CloudCoreConfig::from_yaml_str_with_host(&yaml, &host())
            .expect("serialised cloudcore config loads");
        assert_eq!(again, c);
    }
    if let Ok(c) = EdgeCoreConfig::from_yaml_str_with_host(text, &host()) {
        let yaml = c.to_yaml().expect("an accepted edgecore config serialises");
        let again = EdgeCoreConfig::from_yaml_str_with_host(&yaml, &host())
            .expect("serialised edgecore config loads");
        assert_eq!(again, c);
    }
}

fn default_documents() -> Vec<String> {
    vec![
        CloudCoreConfig::default_config(&host()).to_yaml().unwrap(),
        EdgeCoreConfig::default_config(&host()).to_yaml().unwrap(),
        include_str!("fixtures/cloudcore-kubeedge-defaultconfig.yaml").to_owned(),
        include_str!("fixtures/edgecore-kubeedge.yaml").to_owned(),
    ]
}

/// JSON pointers of every node in `value`.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let escaped = k.replace('~', "~0").replace('/', "~1");
                pointers(v, format!("{at}/{escaped}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                pointers(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(1),
            Just(65535),
            Just(65536),
            Just(i64::from(i32::MAX)),
            Just(i64::from(i32::MIN)),
        ]
        .prop_map(Value::from),
        ".{0,24}".prop_map(Value::String),
        prop_oneof![
            Just("0.0.0.0:1"),
            Just("[::1]:80"),
            Just("unix://"),
            Just("1h"),
            Just("-5s"),
            Just("etcd"),
            Just("external"),
            Just("systemd"),
            Just("https://x:1"),
            Just("null"),
            Just("~"),
            Just("yes"),
            Just("0x1F"),
            Just("- a"),
            Just("a: b"),
            Just("'"),
            Just("\n"),
            Just("#"),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((".{0,8}", inner), 0..4)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_do_not_panic(text in any::<String>()) {
        load_both(&text);
    }

    #[test]
    fn yaml_like_strings_do_not_panic(text in "[a-zA-Z0-9:{}\\[\\],&*!|>'\"#%@?~. \n\t-]{0,300}") {
        load_both(&text);
    }

    #[test]
    fn edited_documents_do_not_panic(
        doc in 0usize..4,
        edits in prop::collection::vec((any::<Index>(), 0u8..3, any::<char>()), 1..8),
    ) {
        let mut chars: Vec<char> = default_documents()[doc].chars().collect();
        for (at, op, c) in edits {
            let i = at.index(chars.len() + 1);
            match op {
                0 => chars.insert(i, c),
                1 if i < chars.len() => { chars.remove(i); }
                _ if i < chars.len() => chars[i] = c,
                _ => chars.push(c),
            }
        }
        load_both(&chars.into_iter().collect::<String>());
    }

    #[test]
    fn documents_with_a_replaced_value_do_not_panic(
        doc in 0usize..4,
        at in any::<Index>(),
        replacement in json_value(),
    ) {
        let text = &default_documents()[doc];
        let mut value: Value = serde_json::from_str(
            &serde_json::to_string(&serde_saphyr::from_str::<Value>(text).unwrap()).unwrap(),
        ).unwrap();
        let mut all = Vec::new();
        pointers(&value, String::new(), &mut all);
        let pointer = &all[at.index(all.len())];
        if let Some(slot) = value.pointer_mut(pointer) {
            *slot = replacement;
        }
        // JSON is YAML too.
        load_both(&serde_json::to_string(&value).unwrap());
        load_both(&serde_saphyr::to_string(&value).unwrap());
    }

    #[test]
    fn durations_round_trip(nanos in any::<i64>()) {
        let d = GoDuration::from_nanos(nanos);
        prop_assert_eq!(d.to_string().parse::<GoDuration>(), Ok(d));
    }

    #[test]
    fn duration_parsing_does_not_panic(text in "[-+]?[0-9.]{0,25}(ns|us|µs|μs|ms|s|m|h|d|x)?([0-9.]{0,5}[a-zµ]{0,2}){0,3}") {
        let _ = text.parse::<GoDuration>();
    }
}

#[test]
fn billion_laughs_is_refused() {
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let names = ["b", "c", "d", "e", "f", "g", "h", "i"];
    let mut prev = "a";
    for name in names {
        bomb.push_str(&format!(
            "{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
        prev = name;
    }
    for result in [
        CloudCoreConfig::from_yaml_str_with_host(&bomb, &host()).map(|_| ()),
        EdgeCoreConfig::from_yaml_str_with_host(&bomb, &host()).map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(ConfigError::Yaml { .. })),
            "{result:?}"
        );
    }
}

#[test]
fn aliases_within_budget_still_work() {
    let text = "modules:\n  cloudHub:\n    advertiseAddress: &ips [10.0.0.1]\n    dnsNames: *ips\n";
    let c = CloudCoreConfig::from_yaml_str_with_host(text, &host()).unwrap();
    assert_eq!(c.modules.cloud_hub.dns_names, ["10.0.0.1"]);
}
