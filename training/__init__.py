"""Multi-task pre-training of pathology backbones (Mormont, Geurts & Maree, IEEE JBHI 2021).

The training driver that the original work never released. It is not installed with the
``mtdp_hub`` wheel: run it from the repository root (dependencies: ``pip install -e .[train]``)::

    python -m training --config training/configs/demo.yaml            # built-in demo, CPU, minutes
    torchrun --nproc_per_node=8 -m training --config training/configs/mtdp_resnet50.yaml --pool pool.yaml
    python -m training --resume runs/NAME                               # continue a stopped run
    python -m training scan --pool pool.yaml                            # check every image up front
    python -m training export --run runs/NAME                           # export from the last checkpoint

The modules follow the paper: ``pool`` (tasks) -> ``data`` + ``sampler`` (task-uniform mixed
batches) -> ``model`` (backbone + one linear head per task) -> ``recipe`` (loss, head-gradient
rescaling, LR groups, warm-up, BN re-calibration) -> ``loop`` -> ``checkpoint`` -> export through
:func:`mtdp_hub.export.export_folder`. ``training`` imports ``mtdp_hub``; never the reverse.
"""
