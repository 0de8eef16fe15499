package semantic

import "strings"

// The guard's word knowledge that is not a rule: how phrases, irregular
// verb forms and synonyms map to one concept. It decides which topic words
// count as "the same" when the guard looks for a substitution, so every
// entry is a claim that the two words never ask different things in
// support and chat traffic; words with a second common sense ("book",
// "file", "charge", "train", "end") are left out, since merging them would
// turn a sibling question into a wrong answer.

// phrases are multi-word expressions the guard reads as one word. The
// word is also what opposites sees, so "turn on" against "turn off"
// is refused even when "on" appears elsewhere ("... on my phone").
var phrases = map[[2]string]string{
	{"turn", "on"}: "enable", {"switch", "on"}: "enable",
	{"turn", "off"}: "disable", {"switch", "off"}: "disable",
	{"log", "in"}: "login", {"sign", "in"}: "login",
	{"log", "out"}: "logout", {"sign", "out"}: "logout",
	{"opt", "out"}: "unsubscribe", {"opt", "in"}: "subscribe",
	{"sign", "up"}: "register",
}

// joinPhrases replaces each two-word phrase in toks with its word.
func joinPhrases(toks []token) []token {
	out := toks[:0:0]
	for i := 0; i < len(toks); i++ {
		if i+1 < len(toks) {
			if w, ok := phrases[[2]string{toks[i].lower, toks[i+1].lower}]; ok {
				out = append(out, token{text: w, lower: w, sentence: toks[i].sentence})
				i++
				continue
			}
		}
		out = append(out, toks[i])
	}
	return out
}

// irregular maps irregular verb forms to the verb, which stem cannot do:
// "Who wrote X?" and "X was written by whom?".
var irregular = func() map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(`write wrote written|build built|pay paid|send sent|buy bought
		get got gotten|give gave given|find found|lose lost|keep kept|bring brought|tell told|sell sold
		spend spent|begin began begun|choose chose chosen|drive drove driven|eat ate eaten|fly flew flown
		forget forgot forgotten|freeze froze frozen|know knew known|see saw seen|steal stole stolen
		throw threw thrown|wear wore worn|take took taken|break broke broken|speak spoke spoken
		fall fell fallen|hold held|mean meant|win won|sing sang sung|sleep slept|leave left|run ran
		do did done|go went gone|make made|say said|feel felt|meet met|teach taught|think thought`, "|") {
		forms := strings.Fields(line)
		for _, f := range forms[1:] {
			m[f] = forms[0]
		}
	}
	return m
}()

// synonyms groups words that ask the same thing; each group maps to the
// stem of its first word. Spelling variants and short forms are synonyms
// too.
var synonyms = func() map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(`often frequently|fast quick rapid rapidly speedy
		change modify edit alter|contact reach|information info details
		enable activate|disable deactivate|delete remove erase|restore recover retrieve
		fix repair|photo picture image pic photograph|car auto automobile vehicle
		plane flight airplane aeroplane|reserve reservation|recurring repeating recurrent
		error mistake|price cost|merge combine|undo revert|vacation holiday|cancel terminate
		ship deliver delivery|connect link|allow permit|large big|largest biggest|buy purchase
		method option|difference different differ|summary summarize summarise
		tire tyre|color colour|center centre|favorite favourite|organize organise|license licence
		dictionary dict|document doc|password passcode`, "|") {
		words := strings.Fields(line)
		concept := stem(words[0])
		for _, w := range words {
			m[stem(w)] = concept
		}
	}
	return m
}()

// concept is the form under which a topic word is compared: its verb if
// it is an irregular form, else its stem, merged with its synonyms.
func concept(w string) string {
	if v, ok := irregular[w]; ok {
		w = v
	}
	s := stem(w)
	if c, ok := synonyms[s]; ok {
		return c
	}
	return s
}
