"""Formal models checked before anything touches a host.

- `graph`: the resource dependency DAG from a plan JSON, joined with the pipeline's stages;
  cycle, dangling-reference and destroy-order checks; dot/json/mermaid renderings.
- `process`: the per-host deployment state machine (the journal's transition validator), the
  pure rolling-deploy controller `next_action`, and its exhaustive exploration.
"""
