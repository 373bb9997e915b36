// Connect to WebSocket
const socket = new WebSocket('ws://localhost:8000/api/v1/dashboard/ws');

socket.onopen = () => {
  console.log('WebSocket connected');
  
  // Subscribe to events
  socket.send(JSON.stringify({
    type: 'subscribe',
    event_types: ['file_change', 'auto_commit', 'progress_update'],
    project_id: 'my-project'
  }));
};

socket.onmessage = (event) => {
  const data = JSON.parse(event.data);
  console.log('Received:', data);
  
  switch(data.type) {
    case 'file_change':
      handleFileChange(data.data);
      break;
    case 'auto_commit':
      handleAutoCommit(data.data);
      break;
    case 'progress_update':
      updateProgress(data.data);
      break;
  }
};
