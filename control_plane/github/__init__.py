"""GitHub: verified webhooks that start workflow runs, check runs and comments that report them,
and the auto-merge gate (docs/github.md)."""

from control_plane.github.settings import GitHubConfig, GitHubSettings, IgnoreRules, RepositoryPolicy, Trigger

__all__ = ["GitHubConfig", "GitHubSettings", "IgnoreRules", "RepositoryPolicy", "Trigger"]
