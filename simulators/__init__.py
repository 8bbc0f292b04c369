"""Local, faithful simulators of the Pipedrive and Maileon APIs (product, not test scaffolding).

They share no code with `connectors/`: a simulator built on the client's models would agree with the
client's mistakes. They do share `pmsync.rules.status`, the one statement of Pipedrive's
marketing_status semantics.
"""
