//! The Kubernetes example in deploy/k8s holds together: vault-service's policy file keeps the
//! seed roles, binds the example workload's service account, and grants exactly what the
//! workload's `sentia agent render` configuration reads — which `sentia agent render --check`
//! accepts.
#![allow(clippy::unwrap_used)]

mod shell;

use sentia_policy::{Capability, PolicySet};

fn deploy_file(name: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s");
    std::fs::read_to_string(dir.join(name)).unwrap()
}

/// The lines of the YAML block scalar after `marker` (`key: |`), de-indented.
fn block(yaml: &str, marker: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != marker);
    let indent = lines
        .next()
        .map(|l| l.len() - l.trim_start().len())
        .unwrap()
        + 2;
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn the_kubernetes_example_binds_its_workload_to_exactly_what_its_agent_renders() {
    let set = PolicySet::parse(&block(&deploy_file("20-config.yaml"), "policies.toml: |")).unwrap();
    let defaults = PolicySet::default_set();
    for name in defaults.names() {
        assert_eq!(set.policy(&name), defaults.policy(&name), "{name}");
    }
    let k8s = set.kubernetes().unwrap();
    let role = &k8s.roles["sentia-mcp-server"];
    let workload = deploy_file("60-example-workload.yaml");
    assert!(workload.contains("serviceAccountName: mcp-server"));
    assert!(workload.contains("namespace: sentia-manufacturing"));
    assert!(role.binds("sentia-manufacturing", "mcp-server"));
    assert!(workload.contains("{name: SENTIA_K8S_ROLE, value: sentia-mcp-server}"));
    assert!(workload.contains("audience: sentia,"));
    assert!(k8s.audiences.iter().any(|a| a == "sentia"));

    // The agent's configuration, as the ConfigMap mounts it, passes the agent's own check;
    // every secret it reads is readable by the role, and nothing else of the seed's is.
    let dir = sentia_testkit::scratch_path(&sentia_testkit::unique("deploy-agent"));
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["agent.toml", "app.env.tmpl"] {
        std::fs::write(dir.join(file), block(&workload, &format!("{file}: |"))).unwrap();
    }
    let config = dir.join("agent.toml");
    let (ok, out, err) = shell::sentia(
        &[],
        &[
            "agent",
            "render",
            "--check",
            "--config",
            config.to_str().unwrap(),
        ],
        b"",
    )
    .await;
    assert!(ok, "{err}");
    let read = out.lines().next().unwrap().split(" reads ").nth(1).unwrap();
    let paths: Vec<&str> = read.split(", ").collect();
    assert_eq!(paths.len(), 2, "{out}");
    for p in paths {
        assert!(set.allows(&role.policies, Capability::Read, p), "{p}");
    }
    assert!(out.starts_with("/secrets/app.env (mode 0600)"), "{out}");
    assert!(!set.allows(&role.policies, Capability::Read, "prod/app/db"));
    assert!(!set.allows(&role.policies, Capability::List, "prod/app/mcp-server/x"));
}
