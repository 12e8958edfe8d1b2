"""Links: steps of a vcon-server chain that transform a vCon before it is stored.

A link takes a vCon and returns it (changed or not), a vCon with another uuid, or nothing
(the chain halts). The chain model lives in the configuration; links land here, one module
each, beside ``conserver/storage/`` (one module per store).
"""
