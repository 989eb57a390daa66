"""The preview player page served by the worker's HTTP origin (see ``routes``)."""

from kubecast_worker.player.routes import add_player_routes

__all__ = ["add_player_routes"]
