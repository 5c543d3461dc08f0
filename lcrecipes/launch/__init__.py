"""Launching: the distributed env of a rank (``env``), the memory planner (``plan``), sbatch command lines from a
recipe's ``launch`` section (``sbatch``), the job run in every Slurm task (``job``), the submitit executor
(``submitit_launch``) and eval sweeps as job arrays (``eval_array``)."""
