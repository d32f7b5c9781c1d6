#!/usr/bin/env bash
# vidseg file --model none vs ffmpeg's own libx264 encode, side by side, alternating runs, with
# a one-process PyAV loop of the same transcode (pyav_transcode.py) as a third reference: what
# PyAV itself costs against the ffmpeg CLI, so that the rest of any gap is the pipeline's own.
# The order of the three rotates every round, so a machine that speeds up or slows down during
# the batch favours none of them (use a multiple of 3 rounds).
# usage: vs_ffmpeg.sh IN.mp4 [RUNS]   (prints one line per run: tool, wall s, fps, CPU s)
set -euo pipefail
in=$1; runs=${2:-3}
here=$(dirname "$(readlink -f "$0")")
python=$(dirname "$(command -v vidseg)")/python  # the interpreter vidseg is installed in
frames=$(ffprobe -v error -select_streams v:0 -count_packets -show_entries stream=nb_read_packets -of csv=p=0 "$in")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
tools=(ffmpeg vidseg pyav)
for i in $(seq "$runs"); do
  for k in 0 1 2; do
    tool=${tools[$(( (k + i - 1) % 3 ))]}
    case $tool in
      ffmpeg) cmd=(ffmpeg -loglevel error -y -i "$in" -c:v libx264 -preset veryfast -crf 23 -c:a copy "$out/ff.mp4");;
      vidseg) cmd=(vidseg file "$in" -o "$out/vs.mp4" -y --model none --preset veryfast --crf 23 --no-progress);;
      pyav) cmd=("$python" "$here/pyav_transcode.py" "$in" "$out/pa.mp4");;
    esac
    /usr/bin/time -f "%e %U %S" -o "$out/t" "${cmd[@]}" >/dev/null 2>&1
    read -r wall user sys < "$out/t"
    awk -v t=$tool -v w="$wall" -v u="$user" -v s="$sys" -v n="$frames" -v r="$i" \
      'BEGIN { printf "run %d %-7s wall %6.1f s  %6.1f fps  cpu %6.1f s  load %s\n", r, t, w, n / w, u + s, "'"$(cut -d' ' -f1 /proc/loadavg)"'" }'
  done
done
