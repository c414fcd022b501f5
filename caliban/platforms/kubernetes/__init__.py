"""Kubernetes Jobs, on GKE or any cluster reached through a kubeconfig."""
