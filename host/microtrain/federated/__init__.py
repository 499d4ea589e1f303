"""Federated learning across boards on Flower (docs/federated.md): every board trains its plan's
subset of one int8 model on its own samples; only those tensors (and aggregate metrics) leave it.

exchange      the layout: which elements a board exchanges, as int8 / int32 arrays
strategy      SubsetFedAvg: per-element, sample-weighted, integer FedAvg over different subsets
boards        SerialBoard (a board over its serial link) and SimulatedBoard (the simulator)
client_app    Flower ClientApp (one SuperNode per board)
server_app    Flower ServerApp (rounds, staged rollout, report)
deploy        Flower's commands: SuperLink, SuperNodes, `flwr run`, the App project
fleet         the fleet view of a report (rich table, PNG)
scenario      a non-IID digits federation for tests and benchmarks
"""
