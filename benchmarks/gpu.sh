#!/usr/bin/env bash
# The GPU checks in one script, for a machine with CUDA (CI has none): the CUDA tests, a Dask worker
# on the GPU, the recipe search behind `best`, the one-seed study, and the speed table. Each part is
# time-boxed and logs to OUT/PART.log; the summary lines go to stdout.
#
#   bash benchmarks/gpu.sh DATA_DIR OUT_DIR [PARTS...]    (parts: tests cluster search study speed)
#
# mnistlab is used from src/ (PYTHONPATH), so that a machine whose Python already holds torch needs no
# install; missing pure-Python packages (dask, distributed) must be importable.
set -u
data=$(realpath "$1")
out=$(realpath "$2")
shift 2
parts=("${@:-tests cluster search study speed}")
parts=(${parts[*]})
mkdir -p "$out"
export MNISTLAB_DATA=$data PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
python=${PYTHON:-python3}

part() {  # part NAME SECONDS COMMAND...: run, time, and keep the log's tail
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - start)) s (limit $limit s)"
    tail -n 25 "$out/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

for name in "${parts[@]}"; do
    case $name in
    tests)
        part tests 150 $python -m pytest tests/test_cuda.py -q -p no:cacheprovider ;;
    cluster)
        port=8786
        $python -m distributed.cli.dask_scheduler --host 127.0.0.1 --port $port --no-dashboard --dashboard-address 127.0.0.1:0 \
            >"$out/scheduler.log" 2>&1 &
        scheduler=$!
        sleep 3
        $python -m distributed.cli.dask_worker tcp://127.0.0.1:$port --nthreads 1 --no-dashboard --dashboard-address 127.0.0.1:0 \
            >"$out/worker.log" 2>&1 &
        worker=$!
        sleep 5
        part cluster 120 $python -m mnistlab.cli run final --set train.epochs=3 --cluster tcp://127.0.0.1:$port \
            --out "$out/cluster-run" --quiet
        grep -h '"device"\|device' "$out"/cluster-run/*.json 2>/dev/null | head -3
        kill $worker $scheduler 2>/dev/null
        wait 2>/dev/null ;;
    search)
        part search 280 $python benchmarks/best_search.py benchmarks/best-search.toml --seeds 2 --device cuda \
            --csv "$out/search.csv" ;;
    study)
        part study 240 $python -m mnistlab.cli study --device cuda --out "$out/study" --quiet
        $python -m mnistlab.cli calibrate --device cuda | tail -n 12
        for metrics in "$out"/study/*/metrics.json; do
            $python -c "import json, sys; m = json.load(open(sys.argv[1])); print(m['preset'], 'test', \
                round(m['test']['accuracy'], 4), 'epochs', m['epochs'], 'stack', m['stack_size'], \
                'wall', round(m['wall_seconds']))" "$metrics"
        done ;;
    speed)
        part speed 200 $python benchmarks/speed.py --device cuda --batches 32 full --stacks 1 16 \
            --precisions fp32 bf16 --epochs 3 ;;
    esac
done
