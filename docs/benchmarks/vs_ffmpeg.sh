#!/usr/bin/env bash
# vidseg file --model none vs ffmpeg's own libx264 encode, side by side, alternating runs
# (ABBA: odd rounds run ffmpeg first, even rounds vidseg first, so a machine that speeds up
# or slows down during the batch favours neither).
# usage: vs_ffmpeg.sh IN.mp4 [RUNS]   (prints one line per run: tool, wall s, fps, CPU s)
set -euo pipefail
in=$1; runs=${2:-3}
frames=$(ffprobe -v error -select_streams v:0 -count_packets -show_entries stream=nb_read_packets -of csv=p=0 "$in")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for i in $(seq "$runs"); do
  order="ffmpeg vidseg"; [ $((i % 2)) = 0 ] && order="vidseg ffmpeg"
  for tool in $order; do
    if [ $tool = ffmpeg ]; then
      cmd=(ffmpeg -loglevel error -y -i "$in" -c:v libx264 -preset veryfast -crf 23 -c:a copy "$out/ff.mp4")
    else
      cmd=(vidseg file "$in" -o "$out/vs.mp4" -y --model none --preset veryfast --crf 23 --no-progress)
    fi
    /usr/bin/time -f "%e %U %S" -o "$out/t" "${cmd[@]}" 2>/dev/null
    read -r wall user sys < "$out/t"
    awk -v t=$tool -v w="$wall" -v u="$user" -v s="$sys" -v n="$frames" -v r="$i" \
      'BEGIN { printf "run %d %-7s wall %6.1f s  %6.1f fps  cpu %6.1f s  load %s\n", r, t, w, n / w, u + s, "'"$(cut -d' ' -f1 /proc/loadavg)"'" }'
  done
done
