"""Zero-shot SAM with ground-truth prompts (thesis §6.3, Table 6.2 top rows).

:mod:`.prompts`: points and boxes from a mask and their mapping to the encoder input; :mod:`.sam`: SAM's
prompt encoder + mask decoder on one cached frame; :mod:`.run`: the ``zero-shot`` command's library side.
"""

from stbava.zero_shot.prompts import (
    largest_regions,
    map_boxes_to_input,
    map_coords_to_input,
    prompts_from_mask,
)

__all__ = ["largest_regions", "map_boxes_to_input", "map_coords_to_input", "prompts_from_mask"]
