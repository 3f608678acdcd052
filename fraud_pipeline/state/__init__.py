"""The rules' state that survives restarts and moves with its partitions: local stores backed by a changelog topic.

One module per concern:

    store       PartitionStore: one input partition's RocksDB store, with the changelog offset it covers
    table       PartitionTable: the entities the rules engine reads and writes, over a store (dirty, clean, committed)
    changelog   the changelog topic's name, and Restorer: a store brought up to the changelog's end between polls
    partitions  PartitionStates: every owned partition's table; send changes, commit, roll back, restore, close;
                own_folder: a group's lock on its state folder
"""

from .changelog import Restorer, changelog_topic
from .partitions import PartitionStates, own_folder
from .store import PartitionStore
from .table import PartitionTable

__all__ = ["PartitionStates", "PartitionStore", "PartitionTable", "Restorer", "changelog_topic", "own_folder"]
