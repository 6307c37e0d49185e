# Sourced by the scripts: how to launch ferry's MPI programs on this machine.
# Open MPI refuses to run as root without these; --oversubscribe lets 4 ranks share 2 cores.
if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
# Containers often lack a usable network for Open MPI's out-of-band and TCP layers between
# local ranks; shared memory and loopback are enough for one node.
MPIRUN=(mpirun --oversubscribe --bind-to none)
