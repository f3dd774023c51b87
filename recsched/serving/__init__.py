"""recsched past one machine: the engine on Ray Serve (the `ray` extra).

`router` (pure routing policy by predicted work and priority class, plus its Ray Serve
request-router adapter) and `stats` (replica reports, cluster tail aggregation) import
without Ray; `ray_deploy` (deployments, `RayCluster`, `recsched serve MODEL --ray`) needs it.
"""
