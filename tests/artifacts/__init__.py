"""The shipped files other than code: dashboards, rules, deploy manifests, Dockerfile, examples, repository rules."""
