"""bone_apps in napari: readers for every volume format bone_apps reads, "Segment bone" and
"Score labels (IoU)" widgets.

napari finds the plugin through its npe2 manifest (napari.yaml, the `napari.manifest` entry
point) and imports the modules it names only when a reader or widget is used. Install it with
`pip install 'bone-apps[napari]'`. Qt is reached through napari's own binding (qtpy, magicgui,
superqt), never PySide6 directly, so the plugin runs in a napari started on PyQt or PySide.
The work itself is core's: `core.volume.open_volume` for reading, `core.segment_array` (DLPred's
inferer) for segmenting, `core.scoring.score_stacks` for IoU.
"""
