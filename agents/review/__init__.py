"""The code-review agent: static analysis of what a change adds, plus advisory model comments.

``python -m agents.review --slots N`` runs it against the broker; tasks of type ``code-review``.
"""

from agents.review.agent import build_review_agent
from agents.review.handler import review_handler
from agents.review.models import ReviewInput, ReviewResult
from agents.review.settings import ReviewSettings

__all__ = ["ReviewInput", "ReviewResult", "ReviewSettings", "build_review_agent", "review_handler"]
