"""Dev tools for kwasi-operator, kept out of the shipped package: ``local`` runs the operator against a
local cluster (hack/cluster) the way a pod runs it (tests, bench, demo); ``demo`` is ``make cluster-demo``."""
