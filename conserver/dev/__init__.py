"""Development tooling, never imported by `conserver run`.

- ``devstack``: private redis-server, PostgreSQL, SeaweedFS (S3) and osmem (OpenSearch API)
  servers on free loopback ports, for `conserver dev`, `conserver demo`, the tests and benchmarks.
- ``demo``: `conserver demo` (`make run`): the stack, the supervisor and sample vCons.
- ``samples``: realistic sample vCons.
"""
