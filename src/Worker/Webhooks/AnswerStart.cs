using System.Text;
using Conveyor.Worker.Failures;

namespace Conveyor.Worker.Webhooks;

/// <summary>
/// What the start of a delivery's answer said, read as its bytes come off the connection
/// (<see cref="AnswerStartStream"/>), for the cases where HttpClient fails the request after reading it
/// and so never tells it: the final status line's code (interim 1xx answers passed over), or that the
/// answer does not begin as HTTP does. A header block over the client's limit or with a malformed line
/// after a 2xx status line is then a delivery the receiver took (<see cref="WebhookSender"/>), and bytes
/// of another protocol that end without a line break (HttpClient says only that the answer ended) are
/// told from an answer cut off. Only the first line of each answer is kept; the rest passes unread.
/// </summary>
public sealed class AnswerStart
{
    /// <summary>A status line longer than this is not read (HttpClient's own limit is the header block's, 64 KiB).</summary>
    public const int MaxStatusLineBytes = 256;

    /// <summary>Bytes of an answer that is not HTTP kept for the failure's message.</summary>
    public const int MaxShownBytes = 32;

    private static readonly byte[] Protocol = "HTTP/"u8.ToArray();
    private static readonly AsyncLocal<AnswerStart?> CurrentRequest = new();

    private readonly Lock _lock = new();
    private readonly byte[] _line = new byte[MaxStatusLineBytes];
    private object? _connection;
    private int _length;
    private bool _inInterimHeaders;
    private bool _atLineStart;
    private bool _done;

    private AnswerStart()
    {
    }

    /// <summary>The final status line's code, once one was read.</summary>
    public int? StatusCode
    {
        get { lock (_lock) { return field; } }
        private set;
    }

    /// <summary>The answer's first bytes, shown printable, when they are not the start of an HTTP status line; else null.</summary>
    public string? NotHttp
    {
        get { lock (_lock) { return field; } }
        private set;
    }

    /// <summary>
    /// Starts reading the answer to the request this flow sends next: the connection's stream takes it
    /// when the request is written (<see cref="ForRequestBeingWritten"/>), which HttpClient does in the
    /// caller's flow. The caller's flow, being an async method's, leaves it behind when it returns.
    /// </summary>
    public static AnswerStart Begin()
    {
        var start = new AnswerStart();
        CurrentRequest.Value = start;
        return start;
    }

    /// <summary>The answer a request being written now belongs to, if its sender began one.</summary>
    internal static AnswerStart? ForRequestBeingWritten => CurrentRequest.Value;

    /// <summary>
    /// The request is being written on <paramref name="connection"/>: its answer is read there. A request
    /// written on another connection than before starts over, so the answer is always the last one's: a
    /// pooled connection that failed before answering and the new one HttpClient retries on, or a proxy's
    /// tunnel, whose own answer to <c>CONNECT</c> (and then the TLS bytes it carries) is read on the
    /// proxy's connection, while the receiver's answer is read on the tunnelled one.
    /// </summary>
    internal void WrittenOn(object connection)
    {
        lock (_lock)
        {
            if (ReferenceEquals(_connection, connection))
            {
                return;
            }

            _connection = connection;
            _length = 0;
            _inInterimHeaders = false;
            _atLineStart = false;
            _done = false;
            StatusCode = null;
            NotHttp = null;
        }
    }

    /// <summary>Reads bytes of the answer as they arrive on <paramref name="connection"/>, until its final status line has been read.</summary>
    internal void Observe(object connection, ReadOnlySpan<byte> bytes)
    {
        lock (_lock)
        {
            if (ReferenceEquals(_connection, connection) && !_done)
            {
                Read(bytes);
            }
        }
    }

    private void Read(ReadOnlySpan<byte> bytes)
    {
        for (var i = 0; i < bytes.Length && !_done; i++)
        {
            var b = bytes[i];
            if (_inInterimHeaders)
            {
                SkipInterimHeaders(b);
                continue;
            }

            if (_length < Protocol.Length && b != Protocol[_length])
            {
                var shown = new byte[Math.Min(MaxShownBytes, _length + bytes.Length - i)];
                _line.AsSpan(0, _length).CopyTo(shown);
                bytes.Slice(i, shown.Length - _length).CopyTo(shown.AsSpan(_length));
                NotHttp = HttpFailures.Printable(Encoding.Latin1.GetString(shown), MaxShownBytes * 6);
                _done = true;
                return;
            }

            if (b == '\n')
            {
                StatusLineRead();
            }
            else if (_length < _line.Length)
            {
                _line[_length++] = b;
            }
            else
            {
                _done = true; // Not a status line any server writes; HttpClient judges it.
            }
        }
    }

    /// <summary>
    /// "HTTP/1.1 200 OK": the code is the three digits after an HTTP/1 version and a space, and the line ends there
    /// or goes on with a space (RFC 9112's status-line, as HttpClient reads it). "HTTP/1.1 2000 OK" or
    /// "HTTP/2.0 200 OK" says no 2xx: a malformed status line, which HttpClient refuses as it does another
    /// protocol's bytes.
    /// </summary>
    private void StatusLineRead()
    {
        var line = _line.AsSpan(0, _length).TrimEnd((byte)'\r');
        _length = 0;
        if (line.Length < 12 || !line.StartsWith("HTTP/1."u8) || !char.IsAsciiDigit((char)line[7]) || line[8] != ' '
            || !char.IsAsciiDigit((char)line[9]) || !char.IsAsciiDigit((char)line[10]) || !char.IsAsciiDigit((char)line[11])
            || (line.Length > 12 && line[12] != ' '))
        {
            _done = true;
            return;
        }

        var code = ((line[9] - '0') * 100) + ((line[10] - '0') * 10) + (line[11] - '0');
        if (code is >= 100 and < 200)
        {
            // An interim answer (103 Early Hints): its headers end at an empty line, then the final status line.
            _inInterimHeaders = true;
            _atLineStart = true;
            return;
        }

        StatusCode = code;
        _done = true;
    }

    private void SkipInterimHeaders(byte b)
    {
        if (b == '\n')
        {
            if (_atLineStart)
            {
                _inInterimHeaders = false;
            }

            _atLineStart = true;
        }
        else if (b != '\r')
        {
            _atLineStart = false;
        }
    }
}
