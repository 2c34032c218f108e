"""Build the shipped intent training corpus from the hand-written seed replies.

    make intents-corpus    # rewrites campaign_worker/data/intents/train.tsv

Each seed (every ``tooling/intent_seeds/*.tsv``: ``<language>.tsv`` and further sets named
``<name>_<language>.tsv``; ``intent<TAB>text``, ``\\n`` for a new line) is written out as
it is and in a few deterministic variants, the way replies really arrive:

- SMS: lower case, punctuation dropped, one typo, an emoji, "pls"/"thx" shorthand;
- email: a greeting, a sign-off and name, a signature block, a phone's "Sent from",
  a confidentiality footer or a newsletter's unsubscribe footer, and the quoted original
  message in one of the mail clients' layouts (Gmail, Apple Mail, Outlook) of the
  language, itself saying "Reply STOP to opt out"; sometimes below the reply
  (bottom-posting) or with no quote marks at all.

The model trains on what extraction leaves of each line (as at run time), so the email
variants teach it the leftovers extraction cannot remove. Same seeds, same output: the
random choices come from one seeded generator.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from campaign_worker.domain.labelled_replies import unescape

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "tooling" / "intent_seeds"
OUT = ROOT / "campaign_worker" / "data" / "intents" / "train.tsv"
LANGUAGES = ("en", "de", "fr", "es")

GREETINGS = {
    "en": ["Hi,", "Hello,", "Hi there,", "Hi Sam,", "Hello Acme team,", "Dear Sir or Madam,", ""],
    "de": ["Hallo,", "Hallo zusammen,", "Sehr geehrte Damen und Herren,", "Hi,", "Guten Tag,", ""],
    "fr": ["Bonjour,", "Bonjour Madame,", "Bonjour à tous,", "Salut,", "Madame, Monsieur,", ""],
    "es": ["Hola,", "Buenos días,", "Estimados señores:", "Hola equipo,", "Buenas tardes,", ""],
}
SIGN_OFFS = {
    "en": [
        "Thanks,",
        "Best,",
        "Best regards,",
        "Kind regards,",
        "Cheers,",
        "Regards,",
        "Thank you,",
    ],
    "de": [
        "Viele Grüße",
        "Mit freundlichen Grüßen",
        "Beste Grüße",
        "LG",
        "Gruß",
        "Danke und Grüße",
    ],
    "fr": [
        "Cordialement,",
        "Bien à vous,",
        "Merci,",
        "Bonne journée,",
        "Salutations,",
        "Bien cordialement,",
    ],
    "es": [
        "Saludos,",
        "Un saludo,",
        "Atentamente,",
        "Gracias,",
        "Saludos cordiales,",
        "Un abrazo,",
    ],
}
NAMES = [
    "John",
    "Amy Chen",
    "Thomas Müller",
    "Marie",
    "Lucía Gómez",
    "Peter",
    "Anna",
    "Carlos",
    "J.",
]
TITLES = {
    "en": [
        "Head of Operations | Contoso Ltd",
        "Sales Director",
        "CEO, Example Inc.",
        "Office Manager",
    ],
    "de": [
        "Geschäftsführer",
        "Leitung Einkauf | Beispiel AG",
        "Vertriebsleiterin",
        "Assistenz der GF",
    ],
    "fr": [
        "Directeur commercial",
        "Responsable achats | Exemple SA",
        "Gérante",
        "Assistante de direction",
    ],
    "es": [
        "Director comercial",
        "Responsable de compras | Ejemplo S.L.",
        "Gerente",
        "Asistente de dirección",
    ],
}
PHONES = [
    "+1 555 0100",
    "Tel. +49 30 1234567",
    "Tél. : +33 1 23 45 67 89",
    "Móvil: +34 600 123 456",
]
SENT_FROM = {
    "en": [
        "Sent from my iPhone",
        "Sent from my Galaxy",
        "Get Outlook for iOS",
        "Sent from my Android device",
    ],
    "de": [
        "Von meinem iPhone gesendet",
        "Gesendet von Outlook für Android",
        "Von meinem Samsung Galaxy gesendet",
    ],
    "fr": [
        "Envoyé de mon iPhone",
        "Envoyé depuis Outlook pour Android",
        "Envoyé de mon smartphone Samsung",
    ],
    "es": [
        "Enviado desde mi iPhone",
        "Enviado desde Outlook para Android",
        "Enviado desde mi Samsung Galaxy",
    ],
}
FOOTERS = {
    "en": [
        "CONFIDENTIALITY NOTICE: This email and any attachments are confidential and intended "
        "solely for the addressee. If you received it in error, please notify the sender and delete it.",
        "This message may contain privileged information. If you are not the intended recipient, "
        "please delete it. To unsubscribe from our newsletter click here: https://contoso.example/unsubscribe",
        "Please consider the environment before printing this email.",
    ],
    "de": [
        "Diese E-Mail enthält vertrauliche und/oder rechtlich geschützte Informationen. Wenn Sie "
        "nicht der richtige Adressat sind, informieren Sie bitte sofort den Absender und löschen Sie diese Mail.",
        "Beispiel AG, Sitz: Berlin, Amtsgericht Charlottenburg HRB 12345. Newsletter abbestellen: "
        "https://beispiel.example/abmelden",
    ],
    "fr": [
        "Ce message et toutes les pièces jointes sont confidentiels et établis à l'intention "
        "exclusive de ses destinataires. Si vous l'avez reçu par erreur, merci de le détruire.",
        "Pour vous désabonner de notre newsletter : https://exemple.example/desinscription",
    ],
    "es": [
        "AVISO DE CONFIDENCIALIDAD: Este mensaje y sus anexos son confidenciales y están dirigidos "
        "exclusivamente a su destinatario. Si lo ha recibido por error, notifíquelo y elimínelo.",
        "Para darse de baja de nuestro boletín haga clic aquí: https://ejemplo.example/baja",
    ],
}
ORIGINALS = {
    "en": [
        "Hi {name}! We built Acme for teams like yours. Want to hear more? Reply YES or STOP to opt out.",
        "Hi {name}, just checking in: would a 2-minute overview help? Reply STOP to unsubscribe.",
        "Your quote is ready: https://example.com/quote. Reply BUY to start or NO to pass. Reply STOP to opt out.",
    ],
    "de": [
        "Hallo {name}! Möchten Sie mehr über Acme erfahren? Antworten Sie mit JA oder mit STOPP, um sich abzumelden.",
        "Hallo {name}, nur kurz nachgefragt: Hätten Sie Interesse? Abmelden: Antworten Sie STOPP.",
    ],
    "fr": [
        "Bonjour {name} ! Vous voulez en savoir plus sur Acme ? Répondez OUI, ou STOP pour vous désabonner.",
        "Bonjour {name}, une petite relance : une démo vous intéresse ? STOP pour ne plus recevoir de messages.",
    ],
    "es": [
        "¡Hola {name}! ¿Quiere saber más sobre Acme? Responda SÍ, o BAJA para darse de baja.",
        "Hola {name}, solo para saber: ¿le interesa una demo? Responda BAJA para no recibir más mensajes.",
    ],
}
QUOTE_HEADERS = {
    "en": [
        "On Tue, 3 Dec 2026 at 10:15, Acme Sales <sales@acme.example> wrote:",
        "On Dec 3, 2026, at 10:15 AM, Acme <hello@acme.example> wrote:",
        "-----Original Message-----\nFrom: Acme Sales [mailto:sales@acme.example]\n"
        "Sent: Tuesday, December 03, 2026 10:15 AM\nTo: {name}\nSubject: Quick question",
        "________________________________\nFrom: Acme Sales <sales@acme.example>\n"
        "Sent: Tuesday, December 3, 2026 10:15 AM\nTo: {name} <{name}@example.org>\nSubject: Quick question",
    ],
    "de": [
        "Am 03.12.2026 um 10:15 schrieb Acme Sales <sales@acme.example>:",
        "Am Di., 3. Dez. 2026 um 10:15 Uhr schrieb Acme <hello@acme.example>:",
        "Von: Acme Sales <sales@acme.example>\nGesendet: Dienstag, 3. Dezember 2026 10:15\n"
        "An: {name}\nBetreff: Kurze Frage",
    ],
    "fr": [
        "Le mar. 3 déc. 2026 à 10:15, Acme Sales <sales@acme.example> a écrit :",
        "De : Acme Sales <sales@acme.example>\nEnvoyé : mardi 3 décembre 2026 10:15\n"
        "À : {name}\nObjet : Petite question",
    ],
    "es": [
        "El mar, 3 dic 2026 a las 10:15, Acme Sales (<sales@acme.example>) escribió:",
        "De: Acme Sales <sales@acme.example>\nEnviado: martes, 3 de diciembre de 2026 10:15\n"
        "Para: {name}\nAsunto: Una pregunta rápida",
    ],
}
EMOJI = {
    "positive": ["😊", "👍", "🙂", "🙏", "!!"],
    "opt_out": ["😡", "🙄", "!!!", "😤"],
    "not_interested": ["🙏", "🙂", "", "😕"],
    "question": ["🤔", "🙂", "??", ""],
    "other": ["🙂", "😅", "👋", ""],
    "out_of_office": ["", ""],
}
SHORTHAND = [
    (" please", " pls"),
    (" thanks", " thx"),
    ("you", "u"),
    (" are ", " r "),
    (" bitte", " bitte"),
    (" s'il vous plaît", " svp"),
    (" por favor", " porfa"),
    ("que ", "q "),
]


def seed_files(language: str) -> list[Path]:
    """The language's seed files: ``<language>.tsv`` first, then ``*_<language>.tsv`` by name."""
    files = sorted(SEEDS.glob("*.tsv"))
    unknown = [path.name for path in files if path.stem.rsplit("_", 1)[-1] not in LANGUAGES]
    if unknown:
        raise SystemExit(f"seed files without a known language suffix: {', '.join(unknown)}")
    mine = [path for path in files if path.stem.rsplit("_", 1)[-1] == language]
    return sorted(mine, key=lambda path: (path.stem != language, path.name))


def load_seeds(language: str) -> list[tuple[str, str]]:
    rows = []
    for path in seed_files(language):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            intent, text = line.split("\t", 1)
            rows.append((intent, unescape(text)))
    return rows


def typo(text: str, rng: random.Random) -> str:
    """One keyboard slip: a letter dropped, doubled or two swapped."""
    spots = [i for i, char in enumerate(text) if char.isalpha()]
    if len(spots) < 4:
        return text
    i = rng.choice(spots[1:-1])
    kind = rng.randrange(3)
    if kind == 0:
        return text[:i] + text[i + 1 :]
    if kind == 1:
        return text[:i] + text[i] + text[i:]
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]


def sms_variant(intent: str, text: str, rng: random.Random) -> str:
    out = text
    if rng.random() < 0.6:
        out = out.lower()
    if rng.random() < 0.5:
        out = out.rstrip(".!")
    for long, short in SHORTHAND:
        if long in out and rng.random() < 0.5:
            out = out.replace(long, short)
    if rng.random() < 0.5:
        out = typo(out, rng)
    if rng.random() < 0.35:
        emoji = rng.choice(EMOJI[intent])
        out = f"{out} {emoji}".strip()
    return out


def quoted(language: str, rng: random.Random, name: str) -> str:
    original = rng.choice(ORIGINALS[language]).format(name=name.split()[0])
    header = rng.choice(QUOTE_HEADERS[language]).format(name=name.split()[0])
    if header.startswith(("On ", "Am ", "Le ", "El ")):
        body = "\n".join("> " + line for line in original.split("\n"))
        return f"{header}\n{body}"
    return f"{header}\n\n{original}"


def email_variant(language: str, text: str, rng: random.Random) -> str:
    name = rng.choice(NAMES)
    parts: list[str] = []
    greeting = rng.choice(GREETINGS[language])
    if greeting:
        parts.append(greeting)
    parts.append(text)
    closing: list[str] = []
    if rng.random() < 0.7:
        closing += [rng.choice(SIGN_OFFS[language]), name]
        if rng.random() < 0.4:
            closing += [rng.choice(TITLES[language]), rng.choice(PHONES)]
    if closing:
        parts.append("\n".join(closing))
    if rng.random() < 0.3:
        parts.append(rng.choice(SENT_FROM[language]))
    elif rng.random() < 0.3:
        parts.append(rng.choice(FOOTERS[language]))
    if rng.random() < 0.7:
        parts.append(quoted(language, rng, name))
    return "\n\n".join(parts)


def bottom_posted(language: str, text: str, rng: random.Random) -> str:
    name = rng.choice(NAMES)
    original = rng.choice(ORIGINALS[language]).format(name=name.split()[0])
    return "> " + original + "\n\n" + text


def unmarked_quote(language: str, text: str, rng: random.Random) -> str:
    """The original below the reply with no header or ``>`` (some clients and gateways
    quote so): extraction cannot find it, so the model must learn to read past it."""
    name = rng.choice(NAMES)
    original = rng.choice(ORIGINALS[language]).format(name=name.split()[0])
    return f"{text}\n\n{original}"


def escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", " ").replace("\n", "\\n")


def rows_for(language: str, rng: random.Random) -> list[tuple[str, str, str, str]]:
    rows = []
    for intent, text in load_seeds(language):
        rows.append((intent, text, language, "seed"))
        rows.append((intent, sms_variant(intent, text, rng), language, "sms"))
        if rng.random() < 0.5:
            rows.append((intent, sms_variant(intent, text, rng), language, "sms"))
        rows.append((intent, email_variant(language, text, rng), language, "email"))
        if rng.random() < 0.5:
            rows.append((intent, email_variant(language, text, rng), language, "email"))
        if rng.random() < 0.15:
            rows.append((intent, bottom_posted(language, text, rng), language, "email,quoted"))
        if rng.random() < 0.15:
            rows.append((intent, unmarked_quote(language, text, rng), language, "quoted"))
    return rows


def build() -> list[str]:
    rng = random.Random(20261203)
    lines = [
        "# The intent training corpus: intent<TAB>text<TAB>language<TAB>tags, \\n for a new line.",
        "# Generated by tooling/build_intent_corpus.py from tooling/intent_seeds/*.tsv; do not edit.",
    ]
    seen: set[str] = set()
    for language in LANGUAGES:
        for intent, text, lang, tags in rows_for(language, rng):
            line = f"{intent}\t{escape(text)}\t{lang}\t{tags}"
            key = f"{intent}\t{escape(text)}"
            if key not in seen:
                seen.add(key)
                lines.append(line)
    return lines


def main() -> int:
    lines = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sys.stdout.write(f"wrote {OUT.relative_to(ROOT)}: {len(lines) - 2} replies\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
