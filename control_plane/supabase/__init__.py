"""Supabase: its access tokens as API bearer tokens, and its Auth admin API for ``devart supabase``."""

from control_plane.supabase.settings import SupabaseSettings

__all__ = ["SupabaseSettings"]
