/**
 * Default calibration text: original plain-English prose written for this project (no license
 * restrictions), long enough for a few thousand tokens once repeated with variations. Models
 * with a short context use its beginning. Pass your own text for domain-specific profiles.
 */
const PARAGRAPHS = [
  "Once upon a time, in a small town at the edge of a wide green valley, there lived a girl named Mira who loved to ask questions. Every morning she walked to the bakery with her little brother Tom, and every morning she asked the baker something new. Why does bread rise? Why is the crust brown? Why do the birds come to the window when the ovens are warm?",
  "The baker, an old man with flour in his beard, always smiled and gave her a true answer. Yeast is alive, he said, and it breathes out little bubbles that lift the dough. The crust turns brown because sugar and heat make new flavours. The birds come because they are clever, and they know where the crumbs fall.",
  "One day the river that ran through the valley rose higher than anyone could remember. The rain had fallen for seven days, and the water came up over the stones, over the path, and right to the doors of the houses near the bridge. People carried chairs and blankets up the hill, and the children helped as well as they could.",
  "Mira noticed that the old mill by the river had a wooden gate that could be opened to let the water flow into a second channel. She ran to her father and told him. He looked at the mill for a long time, then called his neighbours, and together they pulled the heavy chain until the gate groaned and lifted.",
  "The water rushed into the old channel, away from the houses, and slowly the river went down. By evening the path by the bridge could be seen again. The baker gave every family a warm loaf, and the mayor said that the town should thank the girl who asked questions, because questions had helped them find the answer.",
  "In the weeks that followed, the town repaired the mill and cleaned the channel so that it would be ready for the next flood. Tom asked if he could help, and the carpenter showed him how to measure a board twice and cut it once. Mira wrote down everything she learned in a notebook with a blue cover.",
  "Science is often described as a method for asking good questions and testing the answers carefully. A scientist observes something surprising, proposes an explanation, and then designs an experiment that could show the explanation to be wrong. When the experiment agrees with the prediction, confidence grows, but the explanation is never beyond question.",
  "Computers follow the same patient rhythm. A program reads its input, keeps a small amount of state, and produces an output one step at a time. When a program must remember a great deal, engineers look for ways to keep only what matters: the recent past, the important facts, and a way to look up the rest when it is needed again.",
  "Memory in people works in a similar way. We remember the beginning of a story and the most recent events very well, but the middle becomes blurry unless something reminds us of it. A name, a smell, or a song can bring back a whole afternoon that we had not thought about for years.",
  "The next spring, the valley was green again and the river was calm. Mira and Tom planted a row of trees along the bank, because the carpenter told them that roots hold the soil in place. Years later, when Mira had become an engineer who built bridges, she still kept the notebook with the blue cover on her desk.",
];

export const CALIBRATION_TEXT: string = [0, 1, 2].map((round) =>
  PARAGRAPHS.map((p, i) => (round === 0 ? p : `${i % 2 === round - 1 ? "Later, " : "Again, "}${p}`))
    .join("\n\n")
).join("\n\n");
