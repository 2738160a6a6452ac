"""`kubectl phalanx`: a kubectl plugin for the people who run TrainingJobs.

A thin client: it reads TrainingJobs, their pods, events, logs and the trainers' metrics through the
user's kubeconfig and renders them with the operator's own models (phalanx.api.models) and
arithmetic (phalanx.core); it never decides anything the operator decides. One module per
subcommand; `cluster` is the only one that talks to the API.
"""
